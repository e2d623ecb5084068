import numpy as np
import pytest

from workflows.config import TargetSpec

from probes.targets import (
    draw_translations,
    layer_targets,
    make_targets,
    shift_depth,
    slide_translations,
    translate_mask,
)


def test_translations_follow_the_paper_ranges_and_scale_with_size():
    spec = TargetSpec()
    t512 = draw_translations(np.arange(200), spec, (512, 512))
    assert t512.shape == (200, 5, 2)
    mag = np.abs(t512)
    assert mag.min() >= 90 and mag.max() <= 120  # [90, 120) rounded to whole pixels
    assert (t512 < 0).any() and (t512 > 0).any()
    # Both signs on both axes, roughly balanced.
    assert 0.4 < (t512[..., 0] > 0).mean() < 0.6 and 0.4 < (t512[..., 1] > 0).mean() < 0.6
    t64 = draw_translations(np.arange(200), spec, (64, 128))
    assert np.abs(t64[..., 1]).min() >= 11 and np.abs(t64[..., 1]).max() <= 15  # 90/8 .. 120/8 on the 64 px side
    assert np.abs(t64[..., 0]).min() >= 22 and np.abs(t64[..., 0]).max() <= 30  # on the 128 px side


def test_translations_are_seeded_per_image():
    spec = TargetSpec(count=3, seed=7)
    all_ids = draw_translations([5, 9, 11], spec, (64, 64))
    alone = draw_translations([9], spec, (64, 64))
    np.testing.assert_array_equal(all_ids[1], alone[0])  # independent of the other images
    other = draw_translations([9], TargetSpec(count=3, seed=8), (64, 64))
    assert not np.array_equal(alone, other)


def test_bad_specs():
    with pytest.raises(ValueError, match="count|>= 1"):
        TargetSpec(count=0)
    with pytest.raises(ValueError, match="low < high"):
        TargetSpec(low=120, high=90)


def test_translate_mask_moves_and_fills_with_background():
    m = np.zeros((2, 8, 8), np.float32)
    m[:, 2:4, 2:4] = 1
    out = translate_mask(m, np.array([3, -2]), np.array([1, -2]))
    expect0 = np.zeros((8, 8), np.float32)
    expect0[3:5, 5:7] = 1
    expect1 = np.zeros((8, 8), np.float32)
    expect1[0:2, 0:2] = 1
    np.testing.assert_array_equal(out[0], expect0)
    np.testing.assert_array_equal(out[1], expect1)
    # Off the frame: the mask leaves, nothing wraps round.
    gone = translate_mask(m[:1], np.array([7]), np.array([0]))
    assert gone.sum() == 0


def test_shift_depth_repeats_the_edge():
    d = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    right = shift_depth(d, np.array([2]), np.array([0]))[0]
    np.testing.assert_array_equal(right[:, 2:], d[0, :, :2])
    np.testing.assert_array_equal(right[:, 0], d[0, :, 0])  # vacated columns copy the left edge column
    np.testing.assert_array_equal(right[:, 1], d[0, :, 0])
    up = shift_depth(d, np.array([0]), np.array([-1]))[0]
    np.testing.assert_array_equal(up[:3], d[0, 1:])
    np.testing.assert_array_equal(up[3], d[0, 3])  # vacated bottom row copies the bottom edge row


def test_make_targets_and_layer_resolution():
    label = np.zeros((16, 16), np.float32)
    label[4:8, 4:8] = 0.9  # a soft mask: binarised at 0.5
    tr = np.array([[4, 0], [0, -4]])
    t = make_targets(label, tr, "saliency")
    assert t.shape == (2, 16, 16) and set(np.unique(t)) == {0.0, 1.0}
    assert t[0, 4:8, 8:12].all() and t[1, 0:4, 4:8].all() and t.sum() == 32
    small = layer_targets(t, 4, 4)
    assert small.shape == (2, 4, 4) and small[0, 1, 2] == 1.0 and np.isclose(small.sum(), 2.0)
    depth = make_targets(np.random.default_rng(0).normal(size=(16, 16)), tr, "depth")
    assert depth.dtype == np.float32 and np.isfinite(depth).all()
    with pytest.raises(ValueError, match="unknown task"):
        make_targets(label, tr, "normals")


def test_slide_translations():
    s = slide_translations(5, (64, 64), extent=0.25)
    np.testing.assert_array_equal(s[:, 0], [-16, -8, 0, 8, 16])
    assert (s[:, 1] == 0).all()
    with pytest.raises(ValueError, match="at least 2"):
        slide_translations(1, (64, 64))
