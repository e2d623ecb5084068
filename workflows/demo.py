"""`sceneprobe demo` (`make demo`): the whole main job on the toy model, submitted to a local Ray head with
`ray job submit`, exactly as on a cluster. Starts the head on 127.0.0.1, submits, waits, stops the head."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_head(url: str, head: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without the token): up
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local Ray head did not come up; see `ray start --head` output") from None
            time.sleep(0.5)


def run_demo(config: str = "configs/demo.yaml", output: str = "runs/demo", num_cpus: int | None = None) -> int:
    """Submit `config` to a fresh local head; returns the job's exit status. Prints the report's path."""
    bin_dir = Path(sys.executable).parent
    # The job's `python` is the first on the head's PATH: this interpreter. Ray's token auth is shared through
    # ~/.ray/auth_token by the head and the CLI.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    output = str((REPO / output).resolve()) if "://" not in output else output
    resume = ["--resume"] if Path(output, "config.yaml").exists() else []
    dashboard = free_port()
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--num-cpus", str(num_cpus or os.cpu_count() or 2), "--include-dashboard", "true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_head(url, head)
        print(f"local Ray head on 127.0.0.1 (dashboard {url}); submitting {config} -> {output}", flush=True)
        job = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
             "python", "-m", "workflows.run", config, "--output", output, *resume], env=env, cwd=REPO)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # only the processes started here (their own session)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    report = Path(output) / "report" / "index.html"
    if job.returncode == 0:
        print(f"\nreport: {report}\nopen it in a browser: file://{report}")
    return job.returncode
