"""Edit-integrity distances on arrays whose answers are known."""

import numpy as np

from probes.integrity import (background_distance, colour_histograms, feature_distance, masked_rmse, moved_region,
                              object_distance)


def test_background_distance_ignores_the_moved_region_only():
    a = np.zeros((1, 8, 8, 3), np.uint8)
    b = a.copy()
    b[0, :4] = 100  # the top half changed
    region = np.zeros((1, 8, 8), bool)
    region[0, :4] = True
    assert background_distance(b, a[0], region)[0] == 0.0  # the change is inside the region
    assert np.isclose(background_distance(b, a[0], ~region)[0], 100.0)  # RMSE in grey levels
    assert np.isnan(masked_rmse(b, a[0], np.zeros((1, 8, 8), bool)))[0]  # nothing left to compare


def test_feature_distance_drops_every_cell_the_region_touches():
    a, b = np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2, 4))
    b[0, 0, 0] = 1.0
    region = np.zeros((1, 8, 8), bool)
    region[0, 3, 3] = True  # one pixel of the top-left 4x4 cell
    assert feature_distance(b, a[0], region)[0] == 0.0
    assert feature_distance(b, a[0], np.zeros((1, 8, 8), bool))[0] > 0


def test_object_distance_is_zero_for_the_same_colours_and_one_for_disjoint_ones():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4] = (200, 20, 20)
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    moved = np.roll(img, 4, axis=0)[None]
    assert object_distance(img, mask, moved, np.roll(mask, 4, axis=0)[None])[0] == 0.0
    green = moved.copy()
    green[0, 4:] = (20, 200, 20)
    assert object_distance(img, mask, green, np.roll(mask, 4, axis=0)[None])[0] == 1.0
    assert np.isnan(object_distance(img, mask, moved, np.zeros((1, 8, 8), bool))[0])
    assert np.allclose(colour_histograms(moved, np.ones((1, 8, 8), bool)).sum(1), 1.0)


def test_moved_region_per_task():
    original = np.zeros((4, 4), np.float32)
    original[0, 0] = 1
    target = np.zeros((1, 4, 4), np.float32)
    target[0, 3, 3] = 1
    assert moved_region(original, target, "saliency").sum() == 2  # both the old and the new place
    assert moved_region(original, target + 0.1, "depth").sum() == 2  # 0.1 change is below DEPTH_CHANGE
