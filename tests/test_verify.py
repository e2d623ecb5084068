"""Checksummed chunks: a flipped byte in an activation chunk, a shard index or a label chunk is an error naming the
array, never data; `sceneprobe verify` finds it and takes its shard back; `--resume` regenerates it bit for bit."""

from pathlib import Path

import numpy as np
import pytest

from synthetic_run import build, fake_labelers
from toy_runs import toy_config
from workflows.stages.labels import label_shards, labelled_shards, read_labels
from workflows.store import completion_records, failure_records, open_store, take_images
from workflows.store.run_store import DamagedChunkError
from workflows.store.verify import scan, verify


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def shard_file(output: str, array: str, block: int) -> Path:
    """The file of Zarr shard (or chunk) `block` along images of `array`."""
    arr = open_store(output)[array]
    return Path(output) / "store.zarr" / array / arr.metadata.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))


@pytest.fixture
def run(tmp_path):
    output = str(tmp_path / "run")
    build(output, n_images=12, shard_size=4)
    for target, labeler in fake_labelers().items():
        label_shards(output, target, labeler)
    return output


def test_every_flipped_byte_is_an_error_naming_the_array_and_verify_takes_its_shard_back(run):
    assert scan(run) == []
    act = "acts/good/act"
    flip(shard_file(run, act, 1), 20)  # inside the first inner chunk of images 4-7
    flip(shard_file(run, "acts/noise/act", 2), -6)  # inside the shard index of images 8-11
    flip(shard_file(run, "labels/depth", 0), 30)  # a label chunk of images 0-3
    root = open_store(run)
    with pytest.raises(DamagedChunkError, match=r"acts/good/act: a stored chunk of images 4-7 is damaged.*verify"):
        take_images(root[act], np.arange(4, 8), 0)
    np.testing.assert_array_equal(np.isfinite(take_images(root[act], np.arange(0, 4), 0)), True)  # others read
    with pytest.raises(DamagedChunkError, match="labels/depth"):
        read_labels(run, "depth", np.arange(4))
    found = {(d.array, d.images, d.shard) for d in verify(run, dry_run=True)}
    assert found == {(act, (4, 7), 1), ("acts/noise/act", (8, 11), 2), ("labels/depth", (0, 3), 0)}
    assert set(completion_records(run)) == {0, 1, 2}  # a dry run marks nothing
    verify(run)
    assert set(completion_records(run)) == {0} and set(failure_records(run)) == {1, 2}
    assert labelled_shards(run, "depth") == {1, 2} and labelled_shards(run, "saliency") == {0, 1, 2}


def test_verify_then_resume_regenerates_the_damaged_shard_bit_for_bit(tmp_path, capsys):
    from workflows.cli import main

    config, output = toy_config(tmp_path)
    assert main(["generate", config, "--no-ray"]) == 0
    act = "acts/mid_0/act"
    before = np.asarray(open_store(str(output))[act][:])
    flip(shard_file(str(output), act, 1), 40)
    capsys.readouterr()
    assert main(["verify", str(output)]) == 1
    err = capsys.readouterr().err
    assert "damaged: " in err and "acts/mid_0/act images 2-3 (work shard 1)" in err and "--resume" in err
    assert main(["generate", config, "--no-ray", "--resume"]) == 0
    np.testing.assert_array_equal(np.asarray(open_store(str(output))[act][:]), before)
    assert main(["verify", str(output)]) == 0
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
