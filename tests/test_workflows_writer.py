"""The shard writer: device-to-host staging, direct shard files, threads. What goes in comes out, byte for byte."""

import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import zarr

from synthetic_run import C, H, STEPS, W, h, w
from workflows.config import PromptsConfig, RunConfig
from workflows.store import Plan
from workflows.store.shardfile import direct_encoding, write_shard
from workflows.store.staging import HostStaging
from workflows.store import Layout, ShardWriter, create_store, open_store

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def empty_store(output: str, n: int = 12, batch: int = 2) -> None:
    cfg = RunConfig(model="synthetic", steps=STEPS, prompts=PromptsConfig(source="file", path="unused.csv"),
                    num_images=None, output=output, shard_size=batch * 2, batch_size=batch, hooks=["a", "b"],
                    extras=[])
    plan = Plan([f"p{i}" for i in range(n)], list(range(n)), ["train"] * n)
    create_store(cfg, plan, Layout({"a": (h, w, C), "b": (h, w, C)}, (H, W), STEPS))


def write_all(output: str, acts: dict[str, np.ndarray], batch: int, to_input, threads: int) -> None:
    """Write `acts[name] (image, step, h, w, c)` batch by batch, steps in reverse order, through `to_input`."""
    n = len(next(iter(acts.values())))
    with ShardWriter(output, threads=threads) as writer:
        for shard, a in enumerate(range(0, n, 2 * batch)):
            writer.begin()
            for b in range(a, min(a + 2 * batch, n), batch):
                for step in reversed(range(STEPS)):
                    for name, x in acts.items():
                        writer.write_act(name, b, step, to_input(x[b:b + batch, step]))
                writer.end_batch()
            writer.complete(shard, {"shard": shard})


def planted(n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=(n, STEPS, h, w, C)).astype(np.float32) for k in ("a", "b")}


def read_back(output: str) -> dict[str, np.ndarray]:
    root = open_store(output)
    return {k: root[f"acts/{k}/act"][:] for k in ("a", "b")}


def test_host_staging_copies_numpy_and_cpu_tensors_with_casts():
    staging = HostStaging()
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    for src in (x, torch.from_numpy(x), torch.from_numpy(x).to(torch.bfloat16)):
        dst = staging.empty((2, 3, 4), np.float16, src)
        assert dst.dtype == np.float16 and dst.shape == (2, 3, 4)
        staging.copy(dst, src)
        staging.wait()
        tol = 1e-2 if getattr(src, "dtype", None) == torch.bfloat16 else 1e-3
        np.testing.assert_allclose(dst, x, atol=tol * 4, rtol=tol)


CRC = zarr.codecs.Crc32cCodec()


@pytest.mark.parametrize("compressors", [None, zarr.codecs.ZstdCodec(level=1), (CRC,),
                                         (zarr.codecs.ZstdCodec(level=1), CRC),
                                         zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
                                         (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), CRC),
                                         zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")])
def test_direct_shard_files_are_byte_identical_to_zarrs(tmp_path, compressors):
    steps = np.random.default_rng(2).normal(size=(5, 3, 4, 4, 8)).astype(np.float16)  # (step, batch, h, w, c)
    root = zarr.open_group(str(tmp_path), mode="w")
    kw = dict(shape=(9, 5, 4, 4, 8), shards=(3, 5, 4, 4, 8), chunks=(3, 1, 4, 4, 8), dtype="float16",
              fill_value=np.nan, compressors=compressors)
    ours, theirs = root.create_array("ours", **kw), root.create_array("theirs", **kw)
    encoding = direct_encoding(ours)
    assert encoding is not None and encoding.checksum == (isinstance(compressors, tuple) and CRC in compressors)
    assert (encoding.compressor is None) == (compressors is None or compressors == (CRC,))
    write_shard(fsspec.filesystem("file"), str(tmp_path), ours, 1, steps, encoding)
    theirs[3:6] = steps.swapaxes(0, 1)
    assert (tmp_path / "ours/c/1/0/0/0/0").read_bytes() == (tmp_path / "theirs/c/1/0/0/0/0").read_bytes()
    got = zarr.open_group(str(tmp_path), mode="r")["ours"]
    np.testing.assert_array_equal(got[3:6], steps.swapaxes(0, 1))
    assert np.isnan(got[:3]).all() and np.isnan(got[6:]).all()


def test_layouts_not_known_to_shardfile_are_left_to_zarr(tmp_path):
    root = zarr.open_group(str(tmp_path), mode="w")
    plain = root.create_array("plain", shape=(4, 2, 3), chunks=(2, 1, 3), dtype="float16")
    two_steps = root.create_array("two", shape=(4, 2, 3), shards=(2, 2, 3), chunks=(2, 2, 3), dtype="float16")
    gzip = root.create_array("gzip", shape=(4, 2, 3), shards=(2, 2, 3), chunks=(2, 1, 3), dtype="float16",
                             compressors=zarr.codecs.GzipCodec())
    assert direct_encoding(plain) is None and direct_encoding(two_steps) is None
    assert direct_encoding(gzip) is None


@pytest.mark.parametrize("threads", [1, 3])
def test_threaded_writer_stores_every_batch_exactly(tmp_path, threads):
    acts = planted(11)  # the last batch is an edge batch (1 of 2 images): written through Zarr
    empty_store(str(tmp_path / "run"), n=11)
    write_all(str(tmp_path / "run"), acts, 2, torch.from_numpy, threads)
    for name, got in read_back(str(tmp_path / "run")).items():
        np.testing.assert_array_equal(got, acts[name].astype(np.float16), err_msg=name)


def test_writer_rejects_zero_threads(tmp_path):
    empty_store(str(tmp_path / "run"))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        ShardWriter(str(tmp_path / "run"), threads=0)


def test_close_writes_what_is_queued_and_stops_the_threads(tmp_path):
    output = str(tmp_path / "run")
    empty_store(output)
    acts = planted()
    writer = ShardWriter(output, threads=3)
    threads = list(writer._threads)
    writer.begin()
    for step in range(STEPS):
        for name, x in acts.items():
            writer.write_act(name, 0, step, x[0:2, step])
    writer.end_batch()  # queued, not yet waited for
    writer.close()
    assert not any(t.is_alive() for t in threads)
    writer.close()  # idempotent
    np.testing.assert_array_equal(open_store(output)["acts/a/act"][0:2], acts["a"][0:2].astype(np.float16))


@pytest.mark.gpu
@CUDA
def test_cuda_activations_are_staged_in_pinned_memory_and_land_exactly(tmp_path):
    staging = HostStaging()
    src = torch.randn(4, 8, 8, 16, device="cuda", dtype=torch.float16)
    dst = staging.empty(tuple(src.shape), np.float16, src)
    assert torch.from_numpy(dst).is_pinned()
    staging.copy(dst, src * 2)  # a temporary: record_stream must keep it alive until the copy ran
    staging.wait()
    np.testing.assert_array_equal(dst, (src * 2).cpu().numpy())
    acts = planted()
    empty_store(str(tmp_path / "run"))
    write_all(str(tmp_path / "run"), acts, 2, lambda x: torch.from_numpy(x).cuda(), threads=4)
    for name, got in read_back(str(tmp_path / "run")).items():
        np.testing.assert_array_equal(got, acts[name].astype(np.float16), err_msg=name)


def test_writer_benchmark_runs_both_paths_at_sd_shapes(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sd14.py"
    out = subprocess.run([sys.executable, str(script), "writer", "--batch", "1", "--batches", "1", "--steps", "1",
                          "--compression", "none", "--tmp", str(tmp_path)], capture_output=True, text=True, check=True)
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| d") or
            line.startswith("| z")]
    assert rows == ["direct", "zarr"]
    assert not list(tmp_path.iterdir())  # each store is deleted after its row
