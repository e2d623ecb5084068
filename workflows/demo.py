"""`sceneprobe demo` (`make demo`): the whole main job on the toy model, submitted to a local Ray head with
`ray job submit`, exactly as on a cluster. Starts the head on 127.0.0.1, submits, waits, stops the head.

Ray's token authentication needs a token shared by the head and the CLI. A user's own token (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is used as it is; on a machine that has none (a fresh home folder), the
demo makes one for this head alone, in a private temporary file that goes with the head. It is never printed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ldm.errors import UserError
from workflows.store.paths import CONFIG

REPO = Path(__file__).resolve().parents[1]
HEAD_LOG_LINES = 15  # lines of the head's own output shown when it does not come up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_auth_token(env: dict[str, str], folder: str) -> dict[str, str]:
    """`env` with token authentication on and a token the head and the CLI share: the user's own if there is one,
    else a new one written (mode 0600) to `folder/auth_token` and named by RAY_AUTH_TOKEN_PATH."""
    env = {**env, "RAY_AUTH_MODE": "token"}
    home_token = Path(env.get("HOME") or Path.home(), ".ray", "auth_token")  # where Ray looks by default
    if not (env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or home_token.is_file()):
        path = Path(folder, "auth_token")
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes
        env["RAY_AUTH_TOKEN_PATH"] = str(path)
    return env


@dataclass
class LocalHead:
    url: str  # the dashboard and job server, http://127.0.0.1:PORT
    env: dict[str, str]  # the environment the head runs in: give it to `ray job submit` too


def _last_lines(path: Path, n: int = HEAD_LOG_LINES) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return "\n".join(lines[-n:]) or "(no output)"


def _stop(head: subprocess.Popen) -> None:
    """Stop the head and everything it started (their own process group), SIGKILL if SIGTERM is not enough."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return  # already gone, e.g. it never came up
        try:
            head.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def local_head(num_cpus: int | None = None, env: dict[str, str] | None = None, extra_args: tuple[str, ...] = (),
               wait_seconds: float = 90) -> Iterator[LocalHead]:
    """A Ray head on 127.0.0.1 for the duration of the block: dashboard and job server bound to loopback, its output
    kept in a temporary log that is shown (last lines) if it does not come up."""
    bin_dir = Path(sys.executable).parent
    # The job's `python` is the first on the head's PATH: this interpreter.
    env = {**(os.environ if env is None else env), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="sceneprobe-head-") as folder:
        env = with_auth_token(env, folder)
        log = Path(folder, "head.log")
        dashboard = free_port()
        with open(log, "wb") as out:
            head = subprocess.Popen(
                [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                 "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                 "--num-cpus", str(num_cpus or os.cpu_count() or 2), "--include-dashboard", "true", *extra_args],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{dashboard}"
        try:
            _wait_for_head(url, head, log, wait_seconds)
            yield LocalHead(url, env)
        finally:
            _stop(head)


def _wait_for_head(url: str, head: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without the token): up
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                print(_last_lines(log), file=sys.stderr)
                state = f"exited with status {head.returncode}" if head.poll() is not None else "did not answer"
                raise UserError(f"the local Ray head {state} (its last lines are above); `ray stop` ends a head "
                                "left running here, `ray start --head` alone shows the whole error") from None
            time.sleep(0.5)


def run_demo(config: str = "configs/demo.yaml", output: str = "runs/demo", num_cpus: int | None = None) -> int:
    """Submit `config` to a fresh local head; returns the job's exit status. Prints the report's path."""
    output = str((REPO / output).resolve()) if "://" not in output else output
    resume = ["--resume"] if Path(output, CONFIG).exists() else []
    with local_head(num_cpus) as head:
        print(f"local Ray head on 127.0.0.1 (dashboard {head.url}); submitting {config} -> {output}", flush=True)
        job = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.url, "--working-dir",
             str(REPO), "--", "python", "-m", "workflows.run", config, "--output", output, *resume],
            env=head.env, cwd=REPO)
    report = Path(output) / "report" / "index.html"
    if job.returncode == 0:
        print(f"\nreport: {report}\nopen it in a browser: file://{report}")
    return job.returncode
