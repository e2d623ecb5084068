"""A run on real object storage: an S3-compatible server on 127.0.0.1 (moto's server, which speaks the S3 REST API
over HTTP and is what s3fs itself tests against), a toy run with `--output s3://bucket/run` through s3fs, its
process SIGKILLed mid-run and resumed on Ray with a generator actor SIGKILLed mid-shard, then the store read with
plain zarr + xarray and compared with a local run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toy_runs import toy_config

REPO = Path(__file__).resolve().parents[1]
BUCKET = "sceneprobe-test"
HOOKS = ["mid_0", "up_3_2"]


def cli(*args: str) -> subprocess.Popen:
    """`sceneprobe ARGS` in a fresh process: every run of this test in the same kind of process (one torch thread
    count), as a resume on the same hardware and settings is bit-identical."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "workflows.cli", *args], cwd=REPO, env=env, stderr=subprocess.PIPE,
                            text=True)


def finished(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return proc.returncode


def kill_one_shard_worker(proc: subprocess.Popen, timeout: float = 120) -> str | None:
    """SIGKILL the first generator actor seen generating a shard below `proc` (benchmarks/chaos.py's filter: this
    run's own busy Ray workers, by pid); its title, or None if `proc` ended first."""
    from test_chaos import load_chaos

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for pid, title in load_chaos().ray_workers(proc.pid).items():
            if title.startswith("ray::GeneratorActor.run_shard"):
                os.kill(pid, signal.SIGKILL)
                return title
        time.sleep(0.05)
    return None


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint on 127.0.0.1 with an empty bucket; fsspec in this process and its children points s3:// at it
    (`FSSPEC_S3_ENDPOINT_URL`, the setting a user gives for MinIO, Ceph or any S3-compatible store)."""
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})  # read at import: set it here too
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(BUCKET)
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.mark.slow
def test_a_run_on_s3_survives_a_kill_resumes_and_reads_with_plain_zarr(s3, tmp_path):
    import s3fs
    import xarray as xr
    import zarr

    from workflows.store import completion_records
    from workflows.store.verify import scan

    url = f"s3://{BUCKET}/run"
    config, local = toy_config(tmp_path / "local", num_images=12, steps=4, hooks=HOOKS)
    start = time.perf_counter()
    finished(cli("generate", config, "--no-ray"))
    local_s = time.perf_counter() - start
    # 1. the same run on S3, its process killed (SIGKILL: no cleanup at all) once a shard is published
    proc = cli("generate", config, "--no-ray", "--output", url)
    fs = s3fs.S3FileSystem(endpoint_url=s3)
    deadline = time.monotonic() + 120
    while not fs.exists(f"{BUCKET}/run/shards/000000.json"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = set(completion_records(url))
    assert 0 in done and len(done) < 6
    assert fs.exists(f"{BUCKET}/run/lease.json")  # the killed run's lease is left behind ...
    # 2. --resume, on Ray, takes the dead owner's lease over and regenerates exactly the missing shards, though a
    #    generator actor is SIGKILLed mid-shard (Ray restarts it; its shard is retried)
    start = time.perf_counter()
    proc = cli("generate", config, "--output", url, "--resume")
    killed = kill_one_shard_worker(proc)
    finished(proc)
    s3_resume_s = time.perf_counter() - start
    assert killed, "no generator actor was seen at work to kill"
    assert set(completion_records(url)) == set(range(6)) and not fs.exists(f"{BUCKET}/run/lease.json")
    assert scan(url) == []  # every chunk's checksum holds on S3 too
    # 3. plain zarr and xarray read it, equal to the local run bit for bit
    options = {"endpoint_url": s3}
    remote = zarr.open_group(f"{url}/store.zarr", mode="r", storage_options=options)
    mine = zarr.open_group(str(local / "store.zarr"), mode="r")
    for hook in HOOKS:
        np.testing.assert_array_equal(remote[f"acts/{hook}/act"][:], mine[f"acts/{hook}/act"][:], err_msg=hook)
    np.testing.assert_array_equal(remote["images"][:], mine["images"][:])
    acts = xr.open_zarr(f"{url}/store.zarr/acts/mid_0", storage_options=options, consolidated=False)["act"]
    assert acts.dims == ("image", "step", "h", "w", "c") and acts.shape[0] == 12
    np.testing.assert_array_equal(acts.values, mine["acts/mid_0/act"][:])
    print(f"local run {local_s:.1f} s; S3 resume of the killed run {s3_resume_s:.1f} s")
