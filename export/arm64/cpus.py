"""The emulated ARM64 CPUs kseg benchmarks on, and the QEMU configurations it refuses.

Two traps give silently wrong results or crashes with Debian 12's QEMU 7.2 (both seen on
LiteRT 2.3, see the README's "On an emulated ARM64 CPU"):

- QEMU 7.2 passes the host's x86 `/proc/cpuinfo` through to the guest. XNNPACK's CPU
  detection then crashes in `allocate_tensors` (segfault), or picks kernels for another
  core ("Illegal instruction"). The fix is a fake arm64 cpuinfo whose MIDR fields match the
  emulated core and whose Features line is what the emulated core reports in AT_HWCAP.
- QEMU 7.2's default `-cpu max` turns on SVE2/SME/i8mm/bf16, and every int8 output came out
  wrong (argmax agreement 0.50). `max,sme=off` is exact again; a named core is safer still.

So every run names its core (`-cpu cortex-a76`, ...): an unpinned CPU is refused too.
"""

import os
import re

# MIDR_EL1 fields of the cores QEMU emulates (QEMU's target/arm/cpu64.c values).
# cortex-a76: phone-class big core with the dot-product extension (asimddp);
# cortex-a53: Raspberry Pi 3-class little core without it.
CPUS = {
    "cortex-a53": {"implementer": 0x41, "variant": 0x0, "part": 0xD03, "revision": 4, "class": "Raspberry Pi 3"},
    "cortex-a72": {"implementer": 0x41, "variant": 0x0, "part": 0xD08, "revision": 3, "class": "Raspberry Pi 4"},
    "cortex-a76": {"implementer": 0x41, "variant": 0x4, "part": 0xD0B, "revision": 1, "class": "phone big core"},
    "neoverse-n1": {"implementer": 0x41, "variant": 0x4, "part": 0xD0C, "revision": 1, "class": "server core"},
}
DEFAULT_CPUS = ("cortex-a76", "cortex-a53")
MAX_CPU_VERIFIED = (10, 0)  # the first QEMU seen to give exact int8 results on `-cpu max`

# Linux arm64 hwcap bit names (arch/arm64/include/uapi/asm/hwcap.h), in bit order.
HWCAP_NAMES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
    "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
HWCAP2_NAMES = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
    "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 "
    "sme_f16f32 sme_b16f32 sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1"
).split()


class ConfigurationError(ValueError):
    """A QEMU / CPU configuration known to give wrong results, or one kseg cannot check."""


def parse_qemu_version(text):
    """(major, minor, patch) from `qemu-aarch64 --version` output, e.g. "qemu-aarch64 version 7.2.22 (...)"."""
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ConfigurationError(f"cannot read a QEMU version from {text.strip()[:120]!r}; expected 'version X.Y.Z'")
    return tuple(int(g or 0) for g in match.groups())


def needs_fake_cpuinfo(qemu_version):
    """True for QEMU before 8.1, which shows the guest the host's /proc/cpuinfo.

    QEMU 8.1 and later write an arm64 /proc/cpuinfo for the guest themselves.
    """
    return tuple(qemu_version) < (8, 1)


def check_cpu(qemu_version, cpu):
    """Refuses an unpinned CPU, QEMU's `max` core where it is known wrong, and cores kseg has no MIDR for
    where QEMU needs a fake cpuinfo; returns the CPU model name ("cortex-a76").

    Args:
        qemu_version: (major, minor, patch) of the qemu-aarch64 that will run the guest.
        cpu: the `-cpu` value, e.g. "cortex-a76" or "max,sme=off"; None or "" is unpinned.

    Raises:
        ConfigurationError: naming the setting, what was seen and what is expected.
    """
    version = ".".join(map(str, qemu_version))
    if not cpu or not str(cpu).strip():
        raise ConfigurationError(
            "unpinned CPU: QEMU would pick its default `max` core, whose results depend on the QEMU version "
            f"(on 7.2 every int8 output was wrong); name one of {', '.join(CPUS)}")
    model, *options = str(cpu).strip().split(",")
    if model in ("max", "any", "host") and tuple(qemu_version) < MAX_CPU_VERIFIED and "sme=off" not in options:
        raise ConfigurationError(
            f"cpu {cpu!r} on QEMU {version}: `max` without sme=off gives wrong int8 results there "
            f"(SVE2/SME/i8mm on; argmax agreement 0.50 seen on 7.2, exact from 10.0); use a named core "
            f"({', '.join(CPUS)}) or 'max,sme=off'")
    if needs_fake_cpuinfo(qemu_version) and model not in CPUS:
        raise ConfigurationError(
            f"cpu {cpu!r} on QEMU {version}: no MIDR known to write its fake /proc/cpuinfo; expected one of "
            f"{', '.join(CPUS)}")
    return model


def check_configuration(qemu_version, cpu, fake_cpuinfo):
    """`check_cpu`, and on a QEMU that needs one, a fake arm64 cpuinfo file; returns the CPU model name.

    Args:
        qemu_version: (major, minor, patch) of the qemu-aarch64 that will run the guest.
        cpu: the `-cpu` value (see `check_cpu`).
        fake_cpuinfo: path of the arm64 cpuinfo bind-mounted over the guest's /proc/cpuinfo,
            or None when there is none.

    Raises:
        ConfigurationError: naming the setting, what was seen and what is expected.
    """
    model = check_cpu(qemu_version, cpu)
    if needs_fake_cpuinfo(qemu_version) and (fake_cpuinfo is None or not os.path.isfile(fake_cpuinfo)):
        raise ConfigurationError(
            f"QEMU {'.'.join(map(str, qemu_version))} shows the guest the host's x86 /proc/cpuinfo (LiteRT's XNNPACK "
            f"then crashes in allocate_tensors or runs kernels for the wrong core): a fake arm64 cpuinfo is "
            f"required, got {fake_cpuinfo!r}")
    return model


def hwcap_features(hwcap, hwcap2=0):
    """The /proc/cpuinfo Features names of AT_HWCAP and AT_HWCAP2 bit masks, in kernel order."""
    names = [n for bit, n in enumerate(HWCAP_NAMES) if hwcap >> bit & 1]
    names += [n for bit, n in enumerate(HWCAP2_NAMES) if hwcap2 >> bit & 1]
    unknown = [b for b in range(64) if hwcap >> b & 1 and b >= len(HWCAP_NAMES)]
    unknown += [32 + b for b in range(64) if hwcap2 >> b & 1 and b >= len(HWCAP2_NAMES)]
    if unknown:
        raise ConfigurationError(f"hwcap bits {unknown} have no known name; cannot write a faithful cpuinfo")
    return names


def fake_cpuinfo(cpu, features, processors):
    """The text of an arm64 /proc/cpuinfo for `processors` cores of model `cpu`.

    Args:
        cpu: a key of CPUS.
        features: Features names (from `hwcap_features` of what the emulated core reports).
        processors: number of "processor" blocks (the host's CPU count, as sysfs says).
    """
    if cpu not in CPUS:
        raise ConfigurationError(f"cpu {cpu!r}: no MIDR known; expected one of {', '.join(CPUS)}")
    m = CPUS[cpu]
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x{implementer:02x}\n"
        "CPU architecture: 8\nCPU variant\t: 0x{variant:x}\nCPU part\t: 0x{part:03x}\nCPU revision\t: {revision}\n\n")
    return "".join(block.format(i=i, features=" ".join(features), **m) for i in range(processors))


def read_auxv_hwcaps(auxv_bytes):
    """(AT_HWCAP, AT_HWCAP2) from the raw bytes of a 64-bit little-endian /proc/self/auxv."""
    import struct

    values = {}
    for offset in range(0, len(auxv_bytes) - 15, 16):
        key, value = struct.unpack_from("<QQ", auxv_bytes, offset)
        if key == 0:
            break
        values[key] = value
    if 16 not in values:
        raise ConfigurationError("the guest's auxiliary vector has no AT_HWCAP entry")
    return values[16], values.get(26, 0)
