"""The browser demo's page (mobile_demo/): build it with Vite, serve it, drive it in headless Chromium.

The tests and the benchmarks use these three to run the page on the models `export.webdemo` wrote;
they need Node.js, Debian's chromium and `npm ci` in mobile_demo/ (`missing_tools` says what is absent).
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "mobile_demo"
CHROMIUM = Path("/usr/bin/chromium")



def missing_tools(demo=DEMO):
    """What building and driving the page needs and this machine lacks ("" when nothing)."""
    checks = (
        ("node", shutil.which("node")),
        (str(CHROMIUM), CHROMIUM.exists()),
        (f"{demo}/node_modules (run `npm ci` there)", (Path(demo) / "node_modules" / "playwright-core").exists()),
    )
    return ", ".join(what for what, ok in checks if not ok)


def build_site(out_dir, demo=DEMO):
    """`vite build` of the page into `out_dir` (without any models a developer exported)."""
    out_dir = Path(out_dir)
    subprocess.run(["npx", "vite", "build", "--outDir", str(out_dir), "--emptyOutDir", "--logLevel", "warn"],
                   cwd=demo, check=True, timeout=300)
    shutil.rmtree(out_dir / "models", ignore_errors=True)
    return out_dir


@contextlib.contextmanager
def serve(site_dir, demo=DEMO, port=None, timeout=60):
    """`vite preview` of a built site on 127.0.0.1; yields its URL and stops it on exit."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = subprocess.Popen(
        ["npx", "vite", "preview", "--outDir", str(site_dir), "--port", str(port), "--strictPort"],
        cwd=demo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"vite preview did not start on port {port}: {server.stdout.read1().decode()}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def drive(url, steps, work_dir, video=None, webgpu=False, timeout_ms=90000, demo=DEMO):
    """Runs mobile_demo/tests/drive.mjs (headless Chromium) on `url`; returns its result dict.

    Raises RuntimeError with the page's last console lines when a step fails.
    """
    from export.runtime import SWIFTSHADER_ICD

    plan = {"url": url, "steps": steps, "webgpu": webgpu, "timeoutMs": timeout_ms, "chromium": str(CHROMIUM)}
    if video:
        plan["video"] = str(video)
    plan_path = Path(work_dir) / f"plan_{time.monotonic_ns()}.json"
    result_path = plan_path.with_suffix(".result.json")
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, VK_ICD_FILENAMES=SWIFTSHADER_ICD, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    proc = subprocess.run(["node", "tests/drive.mjs", str(plan_path), str(result_path)], cwd=demo, env=env,
                          capture_output=True, text=True, timeout=timeout_ms / 1000 * (len(steps) + 2))
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if proc.returncode != 0:
        console = "\n".join(result.get("console", [])[-15:])
        raise RuntimeError(f"drive.mjs failed: {result.get('failure') or proc.stderr[-2000:]}\npage console:\n{console}")
    return result
