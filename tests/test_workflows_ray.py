"""Generation on a local Ray cluster: a real SIGKILL of an actor mid-shard, failed shards and --resume."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from workflows.config import PromptsConfig, RunConfig
from workflows.stages.prompts import build_plan
from workflows.ray.generate import shard_runner
from workflows.stages.generate import generate
from workflows.store import completion_records, read_manifest, shard_states

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

HOOKS = ["down_0_0", "mid_0", "up_3_2"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(f'{{"prompt": "scene {i}, a cube", "seed": {200 + i}}}\n' for i in range(8)))
    return path


def make_cfg(sd1_path, prompts_file, output, **kw) -> RunConfig:
    base = dict(backend="tests.test_workflows_backend", model=str(sd1_path), steps=2,
                prompts=PromptsConfig(source="file", path=str(prompts_file)), num_images=None, test_fraction=0.5,
                output=str(output), shard_size=2, batch_size=1, actors=2, progress_every=0.0, hooks=HOOKS)
    base.update(kw)
    return RunConfig(**base)


def read_all(output) -> dict[str, np.ndarray]:
    root = zarr.open_group(os.path.join(output, "store.zarr"), mode="r")
    return {"images": root["images"][:], **{n: root[f"acts/{n}/act"][:] for n in HOOKS + ["latent"]}}


@pytest.fixture(scope="module")
def clean(cluster, sd1_path, prompts_file, tmp_path_factory):
    """The uninterrupted run. In this process (cheaper than starting actors) with the actors' one torch thread."""
    import torch

    cfg = make_cfg(sd1_path, prompts_file, tmp_path_factory.mktemp("clean") / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = generate(cfg, run_shards=shard_runner(cfg))
    finally:
        torch.set_num_threads(threads)
    assert result.ok and result.images == 8
    return read_all(cfg.output)


def assert_same(data, reference):
    for name in reference:
        np.testing.assert_array_equal(data[name], reference[name], err_msg=name)


def test_sigkill_mid_shard_is_retried_on_another_actor(clean, sd1_path, prompts_file, control, tmp_path):
    cfg = make_cfg(sd1_path, prompts_file, tmp_path / "run")
    seed = build_plan(cfg).seeds[3]  # image 3: the second batch of shard 1, so image 2 is already written
    (control / f"pause-{seed}").touch()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", generate(cfg, run_shards=shard_runner(cfg))))
    worker.start()
    try:
        deadline = time.monotonic() + 90
        while not (control / "paused").exists() or not (control / "paused").read_text():
            assert time.monotonic() < deadline, "the actor never reached the pause"
            time.sleep(0.1)
        pid = int((control / "paused").read_text())
        assert pid != os.getpid()
        assert 1 not in completion_records(cfg.output)  # mid-shard: not complete, not visible
        os.kill(pid, signal.SIGKILL)
    finally:
        worker.join(timeout=120)
        (control / f"pause-{seed}").unlink()
        (control / "paused").unlink(missing_ok=True)
    result = outcome["result"]
    assert result.ok and result.failed_shards == []
    records = completion_records(cfg.output)
    assert sorted(records) == [0, 1, 2, 3]
    assert records[1]["attempt"] == 1 and records[1]["pid"] != pid  # retried, by another process
    manifest = read_manifest(cfg.output).to_pylist()
    assert sorted(r["image"] for r in manifest) == list(range(8))  # every image exactly once
    assert {r["status"] for r in manifest} == {"complete"}
    assert_same(read_all(cfg.output), clean)  # bit-identical to the uninterrupted run


def test_failed_shard_ends_nonzero_and_resume_regenerates_it(clean, sd1_path, prompts_file, control, tmp_path):
    cfg = make_cfg(sd1_path, prompts_file, tmp_path / "run", max_retries=1)
    seed = build_plan(cfg).seeds[4]
    (control / f"fail-{seed}").touch()  # shard 2 (images 4, 5) fails on every attempt
    try:
        result = generate(cfg, run_shards=shard_runner(cfg))
    finally:
        (control / f"fail-{seed}").unlink()
    assert not result.ok and result.failed_shards == [2] and result.complete == 6
    assert shard_states(cfg.output) == ["complete", "complete", "failed", "complete"]
    kept = {k: r["pid"] for k, r in completion_records(cfg.output).items()}
    result = generate(cfg, resume=True, run_shards=shard_runner(cfg))
    assert result.ok and result.images == 2
    records = completion_records(cfg.output)
    assert {k: r["pid"] for k, r in records.items() if k != 2} == kept  # only the failed shard was regenerated
    assert_same(read_all(cfg.output), clean)
