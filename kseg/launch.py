"""`kseg launch -n N -- train ...`: N local workers of one multi-worker training run.

Each worker is `python -m kseg.cli train ... --strategy multi-worker` with its own `TF_CONFIG`
(a cluster of N workers on 127.0.0.1, free ports, its own index), so the run uses
TensorFlow's `MultiWorkerMirroredStrategy` exactly as it would across hosts. Worker 0 is
the chief: its output goes to the terminal and it alone writes the run folder; worker i > 0
logs to `<log-dir>/worker-<i>.log`.

The launcher supervises: when a worker fails (or is killed), it stops the others and exits
with that worker's status; when the launcher itself is killed, even by SIGKILL, the workers
die with it (Linux: `PR_SET_PDEATHSIG`). Rerunning the same command resumes the run from its
backup. A run folder another process writes is refused before any worker starts; during the
run the chief alone holds its lock. This module imports no TensorFlow.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

from kseg.utils.run_lock import check_run_folder_free

_PR_SET_PDEATHSIG = 1


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports free on `host` now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses, index):
    """The `TF_CONFIG` JSON of worker `index` of a cluster of workers at `addresses`."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": int(index)}})


def worker_command(command):
    """The `kseg` arguments every worker runs: `command` with `--strategy multi-worker`."""
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] != ["train"]:
        raise ValueError(f"kseg launch runs `train`; got {' '.join(command) or 'no command'!r}, expected "
                         "`kseg launch -n N -- train ARGS...`")
    for i, arg in enumerate(command):
        value = (command[i + 1] if i + 1 < len(command) else "(no value)") if arg == "--strategy" else None
        value = arg.split("=", 1)[1] if arg.startswith("--strategy=") else value
        if value is not None and value != "multi-worker":
            raise ValueError(f"--strategy {value}: kseg launch trains with --strategy multi-worker (drop the flag)")
        if arg == "--cpu-replicas" or arg.startswith("--cpu-replicas="):
            raise ValueError("--cpu-replicas splits one process's CPU; kseg launch runs one replica per worker")
    if not any(a == "--strategy" or a.startswith("--strategy=") for a in command):
        command += ["--strategy", "multi-worker"]
    return command


def run_folder(command):
    """The run folder (`--output`) of a `train` command."""
    folder = "runs/latest"  # kseg train's default
    for i, arg in enumerate(command):
        if arg == "--output" and i + 1 < len(command):
            folder = command[i + 1]
        elif arg.startswith("--output="):
            folder = arg.split("=", 1)[1]
    return folder


def _die_with_parent():
    """In the child before exec: receive SIGKILL when the launcher dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def launch(num_workers, command, log_dir="kseg-launch-logs", host="127.0.0.1", poll=0.2, grace=10.0):
    """Starts `num_workers` local workers of `kseg <command>` and waits for them.

    Args:
        num_workers: N >= 1.
        command: the kseg arguments, starting with "train".
        log_dir: folder of the logs of workers 1..N-1.
        host: the address the workers listen on.
        poll: seconds between checks of the workers.
        grace: seconds a worker gets to exit after SIGTERM before SIGKILL.

    Returns:
        0 when every worker succeeded, else the status of the first that failed.
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"-n {num_workers!r}: expected an int >= 1 (the number of workers)")
    command = worker_command(command)
    check_run_folder_free(run_folder(command))  # at once, before N workers start (the chief then holds it)
    addresses = [f"{host}:{port}" for port in free_ports(num_workers, host)]
    os.makedirs(log_dir, exist_ok=True)
    workers, logs = [], []
    try:
        for index in range(num_workers):
            env = dict(os.environ, TF_CONFIG=tf_config(addresses, index))
            log = None if index == 0 else open(os.path.join(log_dir, f"worker-{index}.log"), "w")
            logs.append(log)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "kseg.cli", *command], env=env, stdout=log,
                stderr=subprocess.STDOUT if log else None, preexec_fn=_die_with_parent))
        print(f"kseg launch: {num_workers} workers on {', '.join(addresses)}; logs of workers 1..: {log_dir}",
              file=sys.stderr)
        while True:
            states = [w.poll() for w in workers]
            failed = [(i, rc) for i, rc in enumerate(states) if rc not in (None, 0)]
            if failed:
                index, status = failed[0]
                where = "" if index == 0 else f" (log: {os.path.join(log_dir, f'worker-{index}.log')})"
                print(f"kseg launch: worker {index} exited with status {status}{where}; stopping the others. "
                      "Rerun the same command to resume from the run's backup.", file=sys.stderr)
                return status if status > 0 else 128 - status
            if all(rc == 0 for rc in states):
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(workers, grace)
        for log in logs:
            if log:
                log.close()


def _stop(workers, grace):
    running = [w for w in workers if w.poll() is None]
    for w in running:
        w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in running:
        try:
            w.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
