"""Toy labelers: loading, output conventions, clear errors for bad weight files, accuracy on held-out renders."""

import numpy as np
import pytest

from ldm.toy.labelers import REBUILD_COMMAND, WEIGHTS, load_toy_depth_labeler, load_toy_saliency_labeler
from ldm.toy.render import render_batch
from ldm.toy.train_labelers import evaluate

HELD_OUT = np.arange(1_000_000, 1_000_032)


@pytest.fixture(scope="module")
def held_out():
    return render_batch(HELD_OUT, size=64)


@pytest.fixture(scope="module")
def labelers():
    return load_toy_depth_labeler(), load_toy_saliency_labeler()


def test_weight_file_is_small():
    assert WEIGHTS.stat().st_size < 2 * 1024 * 1024


def test_output_shapes_and_conventions(held_out, labelers):
    depth_fn, saliency_fn = labelers
    d, p = depth_fn(held_out.rgb[:4]), saliency_fn(held_out.rgb[:4])
    assert d.shape == p.shape == (4, 64, 64) and d.dtype == p.dtype == np.float32
    np.testing.assert_allclose(d.mean((1, 2)), 0.0, atol=1e-4)  # standardised per image
    np.testing.assert_allclose(d.std((1, 2)), 1.0, atol=1e-2)
    assert p.min() >= 0.0 and p.max() <= 1.0
    np.testing.assert_array_equal(depth_fn(held_out.rgb[:4]), d)  # deterministic


def test_other_image_sizes_come_back_at_their_own_resolution(held_out, labelers):
    small = held_out.rgb[:2, ::2, ::2]  # (2, 32, 32, 3)
    for fn in labelers:
        assert fn(small).shape == (2, 32, 32)


def test_bad_images_raise_value_error(labelers):
    with pytest.raises(ValueError, match="uint8"):
        labelers[0](np.zeros((2, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        labelers[1](np.zeros((64, 64, 3), dtype=np.uint8))


def test_missing_weight_file_names_file_and_rebuild_command(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_toy_depth_labeler(path)
    assert str(path) in str(err.value) and REBUILD_COMMAND in str(err.value)


@pytest.mark.parametrize("content", [b"not a safetensors file", b""])
def test_corrupt_weight_file_names_file_and_rebuild_command(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(RuntimeError) as err:
        load_toy_saliency_labeler(path)
    assert str(path) in str(err.value) and REBUILD_COMMAND in str(err.value)


def test_truncated_weight_file_is_reported(tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(WEIGHTS.read_bytes()[:5000])
    with pytest.raises(RuntimeError, match="truncated.safetensors"):
        load_toy_saliency_labeler(path)


def test_accuracy_on_held_out_renders(held_out, labelers):
    m = evaluate(*labelers, held_out.rgb, held_out.depth, held_out.salient)
    # Floors well above the position-only baselines (depth Spearman ~0.58, Dice ~0.27, docs/toy-world.md).
    assert m["mask_dice"] > 0.5, m
    assert m["depth_spearman"] > 0.7, m
    assert m["depth_rmse_standardised"] < 0.8, m
