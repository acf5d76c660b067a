"""The cached arm64 Debian root that runs kseg's edge tools under QEMU user-mode emulation.

Set-up (once per cache key, minutes cold; root on an x86-64 Debian host):

    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv --foreign SUITE ROOT MIRROR
    every downloaded package unpacked natively (dpkg-deb | tar), then ldconfig (see `build`)
    chroot ROOT python3 -m venv --without-pip /opt/kseg/venv
    pip install --target ROOT/opt/kseg/venv/lib/python3.X/site-packages --platform ..._aarch64
        ai-edge-litert==H numpy==H pillow==H flatbuffers==H    (H: the host's versions, so
        both sides run the same LiteRT; downloaded by the host's pip, nothing runs emulated)
    ROOT/opt/kseg/x86/: the host's dynamically linked qemu-aarch64 (the static build takes
        no -plugin) with its x86 libraries and the instruction-count plugin, so that it runs
        inside the chroot

The cache lives under ~/.cache/kseg/arm64/KEY (KSEG_ARM64_CACHE overrides), KEY a hash of
the set-up's code, the plugin's source and the versions above; a root with another key is stale and
is deleted (after checking that nothing is mounted in it). A file lock serializes builds:
two runs never build at once, and the second one uses what the first built.

Every guest command runs in its own mount namespace (`unshare --mount`): proc, sysfs, the
host's /dev (--rbind), the fake cpuinfo and the work folder are mounted there and vanish
with the process, so no mount of the host's /dev is ever left inside a root that is deleted.
"""

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from export.arm64 import cpus, plugin

CACHE_ENV = "KSEG_ARM64_CACHE"
MIRROR_ENV = "KSEG_ARM64_MIRROR"
APT_PACKAGES = ("debootstrap", "qemu-user", "qemu-user-static", "binfmt-support", "gcc")
PACKAGES = ("ai-edge-litert", "numpy", "pillow", "flatbuffers")
GUEST_OPT = "/opt/kseg"
GUEST_PYTHON = f"{GUEST_OPT}/venv/bin/python3"
GUEST_WORK = f"{GUEST_OPT}/work"
_X86 = f"{GUEST_OPT}/x86"
_PLATFORMS = [f"manylinux_2_{m}_aarch64" for m in range(36, 16, -1)] + ["manylinux2014_aarch64", "linux_aarch64"]
_HOST_TOOLS = {"debootstrap": "debootstrap", "qemu-aarch64": "qemu-user", "qemu-aarch64-static": "qemu-user-static",
               "update-binfmts": "binfmt-support", "gcc": "gcc", "unshare": "util-linux", "chroot": "coreutils"}


class SetupError(RuntimeError):
    """The host cannot build or run the arm64 root; the message says what to install or fix."""


def cache_dir():
    """Where roots are cached: $KSEG_ARM64_CACHE or ~/.cache/kseg/arm64."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kseg" / "arm64")


# ----------------------------------------------------------------------------- the host


def check_host():
    """Raises SetupError unless this is a root shell on x86-64 Linux with every tool the set-up uses."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SetupError(f"the arm64 emulation set-up runs on x86-64 Linux; this is "
                         f"{platform.system()} {platform.machine()}")
    if os.geteuid() != 0:
        raise SetupError("the arm64 set-up needs root (debootstrap, chroot, mounts, binfmt_misc); run it as root")
    missing = sorted({pkg for tool, pkg in _HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise SetupError(f"missing host packages {missing}: apt-get install {' '.join(APT_PACKAGES)}")


def qemu_version():
    """(major, minor, patch) of the host's dynamically linked qemu-aarch64."""
    out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True, check=True).stdout
    return cpus.parse_qemu_version(out)


def pinned_packages():
    """{package: version}: PACKAGES and ai-edge-litert's requirements, at the versions installed here."""
    pins = {}
    for name in PACKAGES:
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise SetupError(f"{name} is not installed on the host; the guest pins the host's versions") from None
    for requirement in metadata.requires("ai-edge-litert") or []:
        if ";" in requirement:  # extras and platform-specific requirements
            continue
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].strip()
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.setdefault(name.lower(), metadata.version(name))
    return dict(sorted(pins.items()))


def mirror_and_suite():
    """(mirror URL, suite) for debootstrap: the host's own Debian release and the mirror apt uses."""
    release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', Path("/etc/os-release").read_text(), re.M))
    suite = release.get("VERSION_CODENAME")
    if release.get("ID") != "debian" or not suite:
        raise SetupError(f"the arm64 root is a Debian root made from the host's apt mirror; this host is "
                         f"{release.get('PRETTY_NAME', 'unknown')}")
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        texts = [p.read_text() for p in sorted(Path("/etc/apt").glob("sources.list.d/*.sources"))]
        for text in texts:
            for stanza in text.split("\n\n"):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and suite in suites.group(1).split():
                    mirror = mirror or uris.group(1)
        sources = Path("/etc/apt/sources.list")
        if not mirror and sources.exists():
            match = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{suite}\s", sources.read_text(), re.M)
            mirror = match.group(1) if match else None
    if not mirror:
        raise SetupError(f"no apt source for {suite} in /etc/apt; set {MIRROR_ENV} to a Debian mirror URL")
    return mirror, suite


def settings():
    """Everything the root depends on besides this file: it goes into the cache key."""
    mirror, suite = mirror_and_suite()
    return {"suite": suite, "mirror": mirror, "qemu": list(qemu_version()), "packages": pinned_packages(),
            "host_python": platform.python_version()}


def setup_key(config):
    """Hex digest of the set-up's code (`build`, `install_tools`, `_bundle_qemu`), the plugin's
    source and `config`: a root built otherwise is stale."""
    digest = hashlib.sha256()
    for step in (build, install_tools, _bundle_qemu):
        digest.update(inspect.getsource(step).encode())
    digest.update(plugin.SOURCE.encode())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def ensure_binfmt():
    """Registers QEMU for arm64 executables with the kernel (binfmt_misc), so that `chroot ROOT` runs them."""
    fs = Path("/proc/sys/fs/binfmt_misc")
    if not (fs / "status").exists():
        _call(["mount", "-t", "binfmt_misc", "binfmt_misc", str(fs)], "mounting binfmt_misc")
    entry = fs / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        _call(["update-binfmts", "--enable", "qemu-aarch64"], "registering qemu-aarch64 with binfmt_misc")
    if not entry.exists() or "enabled" not in entry.read_text():
        raise SetupError(f"{entry}: qemu-aarch64 is not registered after update-binfmts; "
                         "is qemu-user-static installed?")


def _call(command, what, log=None, **kwargs):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {result.returncode}): {' '.join(map(str, command))}\n{tail}")
    if log:
        log(f"  {what}: {time.perf_counter() - start:.0f} s")
    return result


# ----------------------------------------------------------------------------- mounts and deletion


def mounts_under(path):
    """Mount points at or below `path` in this process's mount namespace."""
    path = os.path.realpath(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == path or point.startswith(path.rstrip("/") + "/"):
            points.append(point)
    return points


def remove_tree(path):
    """Deletes a root folder, first unmounting anything mounted inside it.

    A --rbind of the host's /dev left mounted inside would have `rm -r` delete the host's
    device files: this refuses to delete while any mount remains.
    """
    path = Path(path)
    if not path.exists():
        return
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-R", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise SetupError(f"{path}: still mounted inside after umount -R ({left[:3]}); unmount them, then delete it")
    shutil.rmtree(path)


# ----------------------------------------------------------------------------- the cached root


class Root:
    """A built arm64 root: `path` (the host folder of its files), `key`, `config`, `qemu` version,
    `built_now` (False when it came from the cache)."""

    def __init__(self, folder, key, config, built_now=False):
        self.built_now = built_now
        self.folder = Path(folder)
        self.path = self.folder / "root"
        self.key = key
        self.config = config
        self.qemu = tuple(config["qemu"])

    def host_path(self, guest_path):
        return self.path / str(guest_path).lstrip("/")

    def cpuinfo(self, cpu):
        """A fake /proc/cpuinfo for `cpu` (a key of cpus.CPUS): MIDR from the table, Features
        from the AT_HWCAP bits the emulated core reports to a guest program (cached)."""
        if cpu not in cpus.CPUS:
            raise cpus.ConfigurationError(f"cpu {cpu!r}: no MIDR known; expected one of {', '.join(cpus.CPUS)}")
        target = self.folder / "cpuinfo" / cpu
        if not target.exists():
            probe = "import sys; sys.stdout.write(open('/proc/self/auxv', 'rb').read().hex())"
            result = run_guest(self, cpu, ["-c", probe], work=None, cpuinfo=None, timeout=300)
            if result.returncode != 0:
                raise SetupError(f"probing {cpu}'s hwcaps in the guest failed: {result.stderr.strip()[-500:]}")
            features = cpus.hwcap_features(*cpus.read_auxv_hwcaps(bytes.fromhex(result.stdout.strip())))
            target.parent.mkdir(exist_ok=True)
            temporary = target.with_suffix(".tmp")
            temporary.write_text(cpus.fake_cpuinfo(cpu, features, os.cpu_count() or 1))
            temporary.replace(target)
        return target


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_root(log=None):
    """The cached root for this host's settings, built first when absent or stale.

    Args:
        log: callable taking a progress line (default: print to stderr).

    Returns:
        Root. Raises SetupError when the host lacks something, naming it.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_host()
    ensure_binfmt()
    config = settings()
    key = setup_key(config)
    base = cache_dir()
    folder = base / key
    with _locked(base / "lock"):
        stamp = folder / "ready.json"
        if stamp.exists() and _healthy(folder):
            return Root(folder, key, config)
        stale = sorted(p for p in base.iterdir() if p.is_dir() and p.name != key)
        for old in stale + ([folder] if folder.exists() else []):
            log(f"arm64: removing {'the incomplete' if old == folder else 'the stale'} root {old}")
            remove_tree(old)
        partial = base / f"{key}.partial"
        start = time.perf_counter()
        log(f"arm64: building the root in {folder} (takes minutes; cached afterwards)")
        build(partial / "root", config, log)
        seconds = time.perf_counter() - start
        (partial / stamp.name).write_text(json.dumps({"key": key, "config": config, "build_s": round(seconds, 1),
                                                      "built": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
        partial.rename(folder)
        log(f"arm64: root ready in {seconds:.0f} s")
    return Root(folder, key, config, built_now=True)


def _healthy(folder):
    root = folder / "root"
    needed = [GUEST_PYTHON, f"{_X86}/qemu-aarch64", f"{_X86}/insn.so", f"{_X86}/ld.so"]
    return all((root / p.lstrip("/")).exists() or (root / p.lstrip("/")).is_symlink() for p in needed)


def build(root, config, log):
    """Builds a root at `root` (see the module docstring); every step fails with its command's output.

    debootstrap's first stage resolves, downloads and unpacks the base system natively; its
    second stage would then run dpkg and every maintainer script under emulation (5 minutes
    on an idle 2-core machine, 26 on a busy one). The guest only runs Python, which needs the
    packages' files, not configured packages: they are unpacked natively instead, and only
    ldconfig runs emulated.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _call(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv", "--foreign",
           config["suite"], str(root), config["mirror"]], "debootstrap (download)", log)
    shutil.copy2(shutil.which("qemu-aarch64-static"), root / "usr/bin/qemu-aarch64-static")
    start = time.perf_counter()
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    unpack = 'set -o pipefail; dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"'
    for deb in debs:  # --keep-directory-symlink: /bin, /lib stay links into /usr (merged /usr)
        _call(["bash", "-c", unpack, "unpack", str(deb), str(root)], f"unpacking {deb.name}")
    log(f"  unpacking {len(debs)} packages: {time.perf_counter() - start:.0f} s")
    for mount_point in ("proc", "sys", "dev"):  # the first stage leaves proc -> /proc: a mount there would follow it
        target = root / mount_point
        if target.is_symlink():
            target.unlink()
        target.mkdir(exist_ok=True)
    _call(["chroot", str(root), "/sbin/ldconfig"], "ldconfig (emulated)", log)
    install_tools(root, config, log)


def install_tools(root, config, log):
    """Into a Debian arm64 root: the venv with the host's package versions, QEMU's x86 bundle and the plugin."""
    root = Path(root)
    _call(["chroot", str(root), "python3", "-m", "venv", "--without-pip", f"{GUEST_OPT}/venv"], "guest venv", log)
    ask = "import sys; print('%d.%d' % sys.version_info[:2])"
    version = subprocess.run(["chroot", str(root), "python3", "-c", ask], capture_output=True, text=True,
                             check=True).stdout.strip()
    site = root / f"{GUEST_OPT.lstrip('/')}/venv/lib/python{version}/site-packages"
    platforms = [a for p in _PLATFORMS for a in ("--platform", p)]
    _call([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), "--only-binary=:all:",
           "--python-version", version, "--implementation", "cp", *platforms,
           *(f"{name}=={v}" for name, v in config["packages"].items())], "pip install (aarch64 wheels)", log)
    x86 = root / _X86.lstrip("/")
    _bundle_qemu(x86)
    plugin.build(x86 / "insn.so", tuple(config["qemu"]))
    (root / GUEST_WORK.lstrip("/")).mkdir(parents=True, exist_ok=True)
    check = "import ai_edge_litert.interpreter, numpy, PIL, flatbuffers; print(numpy.__version__)"
    _call(["chroot", str(root), GUEST_PYTHON, "-c", check], "guest imports", log)


def _bundle_qemu(folder):
    """Copies the host's qemu-aarch64, its dynamic loader and libraries into `folder` (x86 files in the root)."""
    lib = folder / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("qemu-aarch64")
    shutil.copy2(binary, folder / "qemu-aarch64")
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    loader = None
    for line in listing.splitlines():
        resolved = re.search(r"=>\s+(/\S+)", line)
        direct = re.match(r"\s*(/\S+)\s+\(0x", line)
        if resolved:
            shutil.copy2(resolved.group(1), lib / Path(resolved.group(1)).name)
        elif direct:
            loader = direct.group(1)
    if loader is None:
        raise SetupError(f"ldd {binary}: no dynamic loader listed; expected a dynamically linked qemu-aarch64")
    shutil.copy2(loader, folder / "ld.so")
    shutil.copy2(loader, lib / Path(loader).name)


# ----------------------------------------------------------------------------- running in the guest

_GUEST_SCRIPT = r"""
set -eu
root=$1 work=$2 cpuinfo=$3 cpu=$4 log=$5; shift 5
for d in proc sys dev opt/kseg/work; do
    if [ -L "$root/$d" ] || [ ! -d "$root/$d" ]; then echo "$root/$d: expected a directory to mount on" >&2; exit 3; fi
done
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
if [ -n "$cpuinfo" ]; then mount --bind "$cpuinfo" "$root/proc/cpuinfo"; fi
if [ -n "$work" ]; then mount --bind "$work" "$root/opt/kseg/work"; fi
set -- -cpu "$cpu" "$@"
if [ -n "$log" ]; then set -- -plugin /opt/kseg/x86/insn.so -d plugin -D "$log" "$@"; fi
# QEMU_CPU: a child the guest starts (multiprocessing) runs under the binfmt-registered QEMU, on the same core.
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/opt/kseg/work LANG=C.UTF-8 PYTHONPATH=/opt/kseg/work/src \
    PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 QEMU_CPU="$cpu" \
    chroot "$root" /opt/kseg/x86/ld.so --library-path /opt/kseg/x86/lib /opt/kseg/x86/qemu-aarch64 "$@"
"""


def run_guest(root, cpu, argv, work, cpuinfo, timeout, plugin_log=None):
    """Runs the guest's Python with `argv` on an emulated `cpu`, in a private mount namespace.

    Args:
        root: a Root.
        cpu: QEMU's -cpu value, checked by cpus.check_configuration (except for the hwcap
            probe, which passes cpuinfo=None and runs no LiteRT).
        argv: arguments after `python3`.
        work: host folder mounted at /opt/kseg/work (holds src/, models, inputs, outputs), or None.
        cpuinfo: host path of the fake /proc/cpuinfo, or None.
        timeout: seconds.
        plugin_log: guest path for the instruction-count plugin's log (under /opt/kseg/work),
            or None to run without the plugin.

    Returns:
        subprocess.CompletedProcess (text stdout/stderr).
    """
    command = ["unshare", "--mount", "--propagation", "private", "bash", "-c", _GUEST_SCRIPT, "arm64-guest",
               str(root.path), str(work or ""), str(cpuinfo or ""), cpu, plugin_log or "", GUEST_PYTHON, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
