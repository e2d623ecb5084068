"""One owner per output: a second run on a busy output is refused by name; a dead or silent owner's lease is taken
over and the takeover logged; the heartbeat keeps a lease fresh and notices a takeover."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from toy_runs import toy_config
from workflows.store.lease import EXPIRY_S, Holding, LeaseHeldError, LeaseLost, acquire, read_lease, release


def plant(output, **fields) -> None:
    """A lease as another run would have written it."""
    os.makedirs(output, exist_ok=True)
    now = time.time()
    lease = {"host": socket.gethostname(), "pid": os.getppid(), "started": now, "heartbeat": now, "token": "theirs"}
    with open(os.path.join(output, "lease.json"), "w") as f:
        json.dump({**lease, **fields}, f)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_refuses_a_second_run_and_a_gone_one_is_taken_over(tmp_path):
    output = str(tmp_path / "run")
    plant(output)  # our parent process: alive, on this host, heartbeat fresh
    with pytest.raises(LeaseHeldError, match=rf"in use by another run \(pid {os.getppid()} on {socket.gethostname()}"):
        acquire(output)
    plant(output, host="elsewhere")  # another host: alive while its heartbeat is fresh
    with pytest.raises(LeaseHeldError):
        acquire(output)
    for gone in ({"pid": dead_pid()}, {"host": "elsewhere", "heartbeat": time.time() - EXPIRY_S - 1}):
        plant(output, **gone)
        log = io.StringIO()
        mine = acquire(output, log)
        assert mine.pid == os.getpid() and read_lease(output).token == mine.token
        assert "taken over from pid" in log.getvalue()
        release(output, mine)
        assert read_lease(output) is None


def test_holding_beats_releases_and_notices_a_takeover(tmp_path):
    output = str(tmp_path / "run")
    with Holding(output, heartbeat_s=0.05) as holding:
        first = read_lease(output).heartbeat
        time.sleep(0.3)
        assert read_lease(output).heartbeat > first  # the heartbeat thread refreshed it
        with Holding(output):  # a stage inside the run: the outer holder keeps the lease
            pass
        assert read_lease(output).token == holding.lease.token
        holding.check()
    assert read_lease(output) is None
    with Holding(output, heartbeat_s=0.05) as holding:
        plant(output, host="elsewhere")  # someone took it over after our heartbeat expired
        time.sleep(0.3)
        with pytest.raises(LeaseLost, match="taken over"):
            holding.check()
    assert read_lease(output).token == "theirs"  # a lost lease is not removed on the way out


def test_a_second_run_on_a_busy_output_is_one_error_line(tmp_path, capsys):
    from workflows.cli import main

    config, output = toy_config(tmp_path, num_images=2)
    plant(str(output))
    assert main(["generate", config, "--no-ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output") and "in use by another run" in err[0]
    plant(str(output), pid=dead_pid())  # its owner was killed: the next run takes over and finishes
    assert main(["generate", config, "--no-ray"]) == 0
    assert "taken over from pid" in capsys.readouterr().err and read_lease(str(output)) is None
