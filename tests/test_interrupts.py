"""A full disk and Ctrl-C: one clear line, every finished unit intact, and `--resume` finishes the run."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from toy_runs import toy_config
from workflows.cli import main
from workflows.store import completion_records, load_run_config
from workflows.store.verify import scan

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_stops_the_run_with_one_line_and_resume_finishes_it(tmp_path, monkeypatch, capsys):
    import workflows.store.writer as writer

    config, output = toy_config(tmp_path, hooks=["mid_0", "up_3_2"])
    real = writer.write_shard

    def fills_up(fs, root, arr, shard, *args):
        if shard == 1:  # the second work shard's activations meet a full disk
            raise OSError(errno.ENOSPC, "No space left on device", f"{root}/{arr.path}")
        return real(fs, root, arr, shard, *args)

    monkeypatch.setattr(writer, "write_shard", fills_up)
    assert main(["generate", config, "--no-ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the storage of") and "is full" in err[-1] and "--resume" in err[-1]
    assert set(completion_records(str(output))) == {0}  # the finished shard is intact, no retries were wasted
    monkeypatch.setattr(writer, "write_shard", real)  # space freed
    assert main(["generate", config, "--no-ray", "--resume"]) == 0
    assert set(completion_records(str(output))) == {0, 1} and scan(str(output)) == []


def test_ctrl_c_leaves_a_resumable_run_and_says_how_to_resume(tmp_path):
    config, output = toy_config(tmp_path, num_images=12, steps=4, hooks=["mid_0", "up_3_2"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "workflows.cli", "generate", config, "--no-ray"], cwd=REPO,
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output / "shards" / "000000.json").exists():  # interrupt once a shard is done, mid-run
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "--resume" in err
    done = set(completion_records(str(output)))
    assert 0 in done and len(done) < 6 and not (output / "lease.json").exists()
    assert main(["generate", config, "--no-ray", "--resume"]) == 0
    assert set(completion_records(str(output))) == set(range(6)) and scan(str(output)) == []
    assert load_run_config(str(output)).num_images == 12
