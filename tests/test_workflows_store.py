"""Generation into the Zarr store without Ray: layout, readers, completion records, resume, refusals, disk full."""

import errno
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import xarray as xr
import zarr

from ldm.capture import ArraySink, capture
from ldm.loading import load_model
from workflows.config import RunConfig, PromptsConfig
from workflows.run import main
from workflows.stages.generate import generate
from workflows.store import RunExistsError, completion_records, complete_images, shard_states

PROMPTS = ["a red cube", "a blue ball", "a green cone, left", "two cubes", "a ball", "a cone"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: one torch thread is much faster here, and keeps results identical between runs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    rows = [f'"{p}",{100 + i},{"test" if i >= 4 else "train"}' for i, p in enumerate(PROMPTS)]
    path.write_text("prompt,seed,split\n" + "\n".join(rows) + "\n")
    return path


def make_cfg(sd1_path, prompts_file, output, **kw) -> RunConfig:
    base = dict(model=str(sd1_path), steps=2, prompts=PromptsConfig(source="file", path=str(prompts_file)),
                num_images=None, output=str(output), shard_size=2, batch_size=1, progress_every=0.0,
                hooks=["down_0_0", "mid_0", "up_1_0"], extras=["latent"])
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def clean(sd1_path, prompts_file, tmp_path_factory):
    cfg = make_cfg(sd1_path, prompts_file, tmp_path_factory.mktemp("clean") / "run")
    result = generate(cfg)
    assert result.ok and result.images == 6
    return cfg


def read_all(output) -> dict[str, np.ndarray]:
    root = zarr.open_group(os.path.join(output, "store.zarr"), mode="r")
    return {"images": root["images"][:], **{n: root[f"acts/{n}/act"][:] for n in ("down_0_0", "mid_0", "up_1_0", "latent")}}


def test_layout_opens_with_plain_zarr_and_xarray(clean, sd1_path):
    root = zarr.open_group(os.path.join(clean.output, "store.zarr"), mode="r")
    act = root["acts/up_1_0/act"]
    assert act.shape == (6, 2, 4, 4, 16) and act.dtype == np.float16 and act.chunks == (1, 1, 4, 4, 16)
    assert act.metadata.dimension_names == ("image", "step", "h", "w", "c")
    assert root["acts/latent/act"].dtype == np.float32
    assert root["images"].shape == (6, 32, 32, 3) and root["images"].dtype == np.uint8
    assert list(root["seed"][:]) == [100, 101, 102, 103, 104, 105]
    assert list(root["split"][:]) == ["train"] * 4 + ["test"] * 2
    assert root.attrs["sceneprobe"]["config"]["steps"] == 2
    ds = xr.open_zarr(os.path.join(clean.output, "store.zarr"), group="acts/up_1_0", consolidated=False)
    assert ds["act"].dims == ("image", "step", "h", "w", "c")
    np.testing.assert_array_equal(ds["act"].isel(step=1).values, act[:, 1])
    tree = xr.open_datatree(os.path.join(clean.output, "store.zarr"), engine="zarr", consolidated=False)
    assert tree["acts/mid_0"]["act"].shape == (6, 2, 2, 2, 16)
    # what was stored is what ldm.capture hands out, cast to float16, and the images are the model's
    model = load_model(str(sd1_path), steps=2)
    sink = ArraySink()
    with capture(model, sink, hooks=["up_1_0"], extras=("latent",)):
        images = model.generate(PROMPTS[2:3], [102])
    np.testing.assert_array_equal(root["images"][2], images[0])
    np.testing.assert_array_equal(act[2], sink.arrays["up_1_0"][0].astype(np.float16))
    np.testing.assert_array_equal(root["acts/latent/act"][2], sink.arrays["latent"][0])


def test_manifest_and_completion_records(clean):
    manifest = pq.read_table(os.path.join(clean.output, "manifest.parquet")).to_pylist()
    assert [r["image"] for r in manifest] == list(range(6))
    assert [r["shard"] for r in manifest] == [0, 0, 1, 1, 2, 2]
    assert {r["status"] for r in manifest} == {"complete"}
    assert manifest[5] | {} == {"image": 5, "prompt": "a cone", "seed": 105, "split": "test", "shard": 2,
                                "status": "complete"}
    records = completion_records(clean.output)
    assert sorted(records) == [0, 1, 2] and records[1]["start"] == 2 and len(records[1]["image_sha256"]) == 2
    assert shard_states(clean.output) == ["complete"] * 3 and complete_images(clean.output).all()


def test_refuses_a_different_run_and_names_the_fields(clean):
    other = RunConfig(**{**clean.__dict__, "steps": 3, "guidance_scale": 5.0})
    with pytest.raises(RunExistsError, match=r"different run; fields that differ: guidance_scale: stored 7.5, given 5.0; "
                                             r"steps: stored 2, given 3"):
        generate(other, resume=True)
    with pytest.raises(RunExistsError, match=r"already holds this run \(3 of 3 shards complete\); pass --resume"):
        generate(clean)
    result = generate(clean, resume=True)  # nothing left to do
    assert result.ok and result.images == 0


def test_resume_regenerates_exactly_missing_and_failed_shards(clean, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(clean.output, out)
    cfg = RunConfig(**{**clean.__dict__, "output": str(out)})
    before = read_all(out)
    # shard 1 was interrupted (no completion record, data half written), shard 2 failed all its attempts
    os.remove(out / "shards" / "000001.json")
    os.rename(out / "shards" / "000002.json", out / "shards" / "000002.failed.json")
    root = zarr.open_group(str(out / "store.zarr"), mode="r+")
    root["images"][2:6] = 0
    root["acts/up_1_0/act"][2:6] = np.nan
    assert shard_states(str(out)) == ["complete", "pending", "failed"]
    kept = (out / "shards" / "000000.json").read_bytes()
    result = generate(cfg, resume=True)
    assert result.ok and result.images == 4  # shards 1 and 2 only
    assert (out / "shards" / "000000.json").read_bytes() == kept
    assert not (out / "shards" / "000002.failed.json").exists()
    after = read_all(out)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_disk_full_mid_write_stops_the_run_and_damages_nothing_else(clean, tmp_path, monkeypatch):
    from workflows.store.files import DiskFullError

    cfg = RunConfig(**{**clean.__dict__, "output": str(tmp_path / "run"), "max_retries": 1})
    real_set = zarr.storage.LocalStore.set

    async def full_disk(self, key, value):
        if "/c/2/" in key:  # every chunk of image 2 (shard 1): the disk is full from then on
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full_disk)
    with pytest.raises(DiskFullError, match=r"storage of .*run is full.*--resume"):  # at once: no retry frees space
        generate(cfg)
    assert shard_states(cfg.output) == ["complete", "pending", "pending"]  # shard 2 never started
    monkeypatch.undo()
    result = generate(cfg, resume=True)
    assert result.ok and result.images == 4
    clean_data, data = read_all(clean.output), read_all(cfg.output)
    for name in clean_data:
        np.testing.assert_array_equal(data[name], clean_data[name], err_msg=name)


def test_fsspec_url_output(clean):
    cfg = RunConfig(**{**clean.__dict__, "output": "memory://sceneprobe-test/run", "hooks": ["mid_0"]})
    result = generate(cfg)
    assert result.ok
    root = zarr.open_group("memory://sceneprobe-test/run/store.zarr", mode="r")
    np.testing.assert_array_equal(root["acts/mid_0/act"][:], read_all(clean.output)["mid_0"])
    assert shard_states("memory://sceneprobe-test/run") == ["complete"] * 3


def test_cli_errors_are_one_line_messages(tmp_path, capsys, prompts_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shard_size: 0\n")
    assert main([str(bad), "--no-ray"]) == 2
    assert "error: shard_size must be >= 1" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"model: toy\nprompts: {{source: file, path: {tmp_path}/nope.csv}}\noutput: {tmp_path}/o\n")
    assert main([str(missing), "--no-ray", "--set", "backend=tests.test_workflows_backend"]) == 2
    assert "nope.csv' not found" in capsys.readouterr().err


def test_status_command(clean, capsys):
    assert main(["--status", clean.output]) == 0
    out = capsys.readouterr().out
    assert "3 shards of 2 images: 3 complete, 0 failed, 0 pending" in out


def test_relative_output_is_refused_inside_a_submitted_job(clean, monkeypatch):
    from workflows.config import ConfigError
    from workflows.pipeline import check_before_start

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a `ray job submit` entrypoint
    cfg = RunConfig(**{**clean.__dict__, "output": "runs/relative"})
    with pytest.raises(ConfigError, match="absolute path or a URL"):
        check_before_start(cfg, ("generate",), resume=False)


def test_take_images_matches_orthogonal_selection(tmp_path):
    from workflows.store import take_images

    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(20, 3, 4, 2), chunks=(4, 1, 4, 2), shards=(8, 3, 4, 2),
                            dtype="float32")
    arr[:] = np.random.default_rng(0).normal(size=arr.shape).astype(np.float32)
    for images in (np.arange(4, 16), np.array([9, 3, 4, 5]), np.array([0, 19]), np.array([], np.int64)):
        for index in ((1,), ()):
            expected = arr.get_orthogonal_selection((images, *index))
            np.testing.assert_array_equal(take_images(arr, images, *index), expected)


def test_a_store_of_another_format_is_refused(clean, tmp_path):
    """The store's format number is checked on read: a store written by an incompatible version is an error, not
    silently misread."""
    import shutil

    from ldm.errors import UserError
    from workflows.store import FORMAT, load_layout

    copy = tmp_path / "copy"
    shutil.copytree(clean.output, copy)
    root = zarr.open_group(str(copy / "store.zarr"), mode="r+")
    meta = dict(root.attrs["sceneprobe"])
    assert meta["format"] == FORMAT
    root.attrs["sceneprobe"] = {**meta, "format": FORMAT + 1}
    with pytest.raises(UserError, match=f"store format {FORMAT + 1}.*reads format {FORMAT} only"):
        load_layout(str(copy))
