"""A TCG plugin that counts the guest instructions QEMU executes, and its log's reader.

Executed guest instructions are the deterministic cost of an emulated inference: wall time
under QEMU says nothing about a phone, but the instructions the guest's kernels run are the
same on every run (within ~0.2 % across repeats: addresses and allocator state vary).

The guest marks points in its run with a syscall no program makes, `lseek(-1, MARK, tag)`
(it fails with EBADF and changes nothing); the plugin sees every syscall and logs the running
count at each mark. Differences between marks give the cost of loading a model, its first
inference and each later inference, without the interpreter's start-up.

Built with gcc against the plugin ABI declared here (Debian ships no qemu-plugin.h); only
functions present from plugin API 1 (QEMU 4.2) to 5 (QEMU 10) are used.
"""

import re
import subprocess
from pathlib import Path

MARK = 0x6B736567  # "kseg": the lseek offset that identifies a mark
LSEEK_AARCH64 = 62  # __NR_lseek in the arm64 (generic) syscall table

SOURCE = r"""
/* kseg instruction counter: a QEMU TCG plugin (user mode). */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;

typedef void (*tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb)(unsigned int vcpu, void *userdata);
typedef void (*syscall_cb)(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                           uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*udata_cb)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb cb, int flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb cb, void *userdata);
void qemu_plugin_outs(const char *text);

EXPORT int qemu_plugin_version = KSEG_PLUGIN_API;

static uint64_t executed; /* guest instructions, all threads */

static void on_block(unsigned int vcpu, void *n_insns)
{
    __atomic_fetch_add(&executed, (uint64_t)(uintptr_t)n_insns, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    /* flags 0 = QEMU_PLUGIN_CB_NO_REGS; the block's length rides along as user data */
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, 0, (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void report(const char *what, uint64_t tag)
{
    char line[96];
    snprintf(line, sizeof line, "kseg-insn %s %" PRIu64 " %" PRIu64 "\n", what, tag,
             __atomic_load_n(&executed, __ATOMIC_RELAXED));
    qemu_plugin_outs(line);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == KSEG_LSEEK && (int32_t)a1 == -1 && a2 == KSEG_MARK)
        report("mark", a3);
}

static void on_exit(qemu_plugin_id_t id, void *userdata)
{
    report("exit", 0);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
"""


def api_version(qemu_version):
    """The plugin API version to declare for a QEMU (major, minor, patch).

    QEMU accepts a plugin whose declared version lies in its [min, current] range: 7.x and
    8.x take 1 (8.x's minimum is 0 or 1), 9.0 and later require at least 2. The functions
    SOURCE uses exist unchanged in both.
    """
    return 1 if tuple(qemu_version) < (9, 0) else 2


def build(out_path, qemu_version, compiler="gcc"):
    """Compiles SOURCE into a shared library at `out_path` for that QEMU; returns the path."""
    out_path = Path(out_path)
    source = out_path.with_suffix(".c")
    source.write_text(SOURCE)
    command = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-fvisibility=hidden",
               f"-DKSEG_PLUGIN_API={api_version(qemu_version)}", f"-DKSEG_LSEEK={LSEEK_AARCH64}",
               f"-DKSEG_MARK={MARK}ULL", "-o", str(out_path), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the instruction-count plugin failed ({' '.join(command)}):\n{result.stderr}")
    return out_path


_LINE = re.compile(r"^kseg-insn (mark|exit) (\d+) (\d+)$")


def read_log(text):
    """The plugin's records in a QEMU log: ([(tag, count) per mark, in order], count at exit or None)."""
    marks, total = [], None
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        kind, tag, count = match.group(1), int(match.group(2)), int(match.group(3))
        if kind == "mark":
            marks.append((tag, count))
        else:
            total = count
    return marks, total


def mark(tag):
    """Called in the guest: a syscall the plugin records with its running count (no effect)."""
    import os

    try:
        os.lseek(-1, MARK, int(tag))
    except OSError:
        pass
