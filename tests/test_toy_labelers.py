"""Toy labelers: loading, output conventions, clear errors for bad weight files, accuracy on held-out renders; the
normal and light heads' training path (mirroring, save, load), run for a few steps only."""

import math

import numpy as np
import pytest
import torch

from ldm.toy.labelers import (
    NORMALS_OUT_CHANNELS,
    NORMALS_REBUILD_COMMAND,
    NORMALS_WEIGHTS,
    OUT_CHANNELS,
    REBUILD_COMMAND,
    WEIGHTS,
    images_to_tensor,
    load_toy_depth_labeler,
    load_toy_light_labeler,
    load_toy_normals_labeler,
    load_toy_saliency_labeler,
    save_labeler,
)
from ldm.toy.render import render_batch, render_scene
from ldm.toy.scene import Camera, Environment, Light, Primitive, Scene
from ldm.toy.train_labelers import (
    depth_target,
    evaluate,
    evaluate_normals,
    mirror_light,
    mirror_normals,
    normal_targets,
    train,
)

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


def test_mirrored_targets_are_the_mirrored_scene_s():
    """The normals and light of a render, mirrored left-right, are those of the mirror-image scene (x -> -x before a
    camera looking along +z), so the training augmentation flips the labels as it flips the image."""

    def scene(sign: float) -> Scene:
        sphere = Primitive("sphere", x=sign * 0.7, z=0.0, radius=0.6, height=1.2)
        light = Light(direction=tuple(np.array([sign * 0.5, 0.8, -0.3]) / math.sqrt(0.98)))
        cam = Camera(position=(0.0, 1.0, -5.0), yaw=0.0, pitch=0.1)
        return Scene(objects=(sphere,), camera=cam, light=light, environment=Environment())

    right, left = render_scene(scene(1.0), 32, antialias=1), render_scene(scene(-1.0), 32, antialias=1)
    n_right = torch.from_numpy(right.normals).permute(2, 0, 1)[None]
    np.testing.assert_allclose(mirror_normals(n_right)[0].permute(1, 2, 0).numpy(), left.normals, atol=1e-5)
    np.testing.assert_allclose(mirror_light(torch.from_numpy(right.light_direction)).numpy(), left.light_direction,
                               atol=1e-6)
    assert not np.allclose(right.normals[right.surface, 0], left.normals[right.surface, 0], atol=1e-2)


def test_normal_heads_train_save_and_load(tmp_path):
    """A few steps of the `--normals` path at width 4: the file loads as all four labelers; unit normals or zero
    (sky), unit lights, at the input's resolution; weights without the heads name the rebuild command."""
    data = render_batch(list(range(8)), size=64, antialias=1)
    targets = [depth_target(data.depth), torch.from_numpy(data.salient).float()[:, None],
               torch.from_numpy(data.objects.any(1)).float()[:, None]] + normal_targets(data)
    model = train(images_to_tensor(data.rgb), targets, steps=2, batch_size=4, seed=0, width=4, lr=1e-3, normals=True)
    path = tmp_path / "normals.safetensors"
    save_labeler(model, path, {"width": 4, "out_channels": NORMALS_OUT_CHANNELS, "light_head": True})
    normals, light = load_toy_normals_labeler(path), load_toy_light_labeler(path)
    n, lights = normals(data.rgb), light(data.rgb)
    assert n.shape == (8, 64, 64, 3) and n.dtype == np.float32 and lights.shape == (8, 3)
    norm = np.linalg.norm(n, axis=-1)
    assert np.all((np.abs(norm - 1) < 1e-4) | (norm == 0))
    np.testing.assert_allclose(np.linalg.norm(lights, axis=-1), 1, atol=1e-5)
    assert normals(data.rgb[:, ::2, ::2]).shape == (8, 32, 32, 3)
    assert load_toy_depth_labeler(path)(data.rgb[:2]).shape == (2, 64, 64)  # the old heads still read channels 0-1
    m = evaluate_normals(normals, light, data.rgb, data.normals, data.surface, data.light_direction)
    assert 0 <= m["normals_angular_mean"] <= 180 and 0 <= m["light_angular_error"] <= 180
    with pytest.raises(RuntimeError, match=NORMALS_REBUILD_COMMAND):
        load_toy_normals_labeler(WEIGHTS)  # the committed weights have no normal heads (yet)
    assert OUT_CHANNELS < NORMALS_OUT_CHANNELS


def test_committed_normal_heads_beat_the_position_baselines(held_out):
    """The committed normals and light heads on 32 held-out renders against the position-only predictions of 64
    training renders (the mean normal map, the mean light), and the file keeps the toy labelers' scale."""
    from probes.baselines_vectors import mean_direction, mean_normal_map

    assert NORMALS_WEIGHTS.stat().st_size < 2 * 1024 * 1024
    train = render_batch(np.arange(64), size=64)
    normals, light = load_toy_normals_labeler(), load_toy_light_labeler()
    m = evaluate_normals(normals, light, held_out.rgb, held_out.normals, held_out.surface, held_out.light_direction)
    mean_map, mean_light = mean_normal_map(train.normals, train.surface), mean_direction(train.light_direction)
    base = evaluate_normals(lambda im: np.broadcast_to(mean_map, (len(im), 64, 64, 3)),
                            lambda im: np.broadcast_to(mean_light, (len(im), 3)), held_out.rgb, held_out.normals,
                            held_out.surface, held_out.light_direction)
    assert m["normals_angular_mean"] < base["normals_angular_mean"] - 5, (m, base)
    assert m["light_angular_error"] < base["light_angular_error"] - 5, (m, base)
    assert m["surface_accuracy"] > 0.95, m
