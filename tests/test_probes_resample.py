import numpy as np
import torch
import torch.nn.functional as F

from probes.resample import downsample_area, downsample_area_torch, upsample_nearest, upsample_nearest_torch


def test_downsample_mask_gives_fractions():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, :2, :3] = 1  # covers 4/16, 2/16 of the two top-left 4x4 cells... and nothing else
    out = downsample_area(mask, 2, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[6 / 16, 0], [0, 0]])


def test_downsample_noninteger_ratio_is_exact_area_average():
    rng = np.random.default_rng(0)
    x = rng.random((3, 10, 6)).astype(np.float32)
    out = downsample_area(x, 4, 4)  # 2.5 x 1.5 pixel cells
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    # first cell: rows 0,1 fully + half of row 2; column 0 fully + half of column 1
    wy = np.array([1, 1, 0.5]) / 2.5
    wx = np.array([1, 0.5]) / 1.5
    np.testing.assert_allclose(out[0, 0, 0], wy @ x[0, :3, :2] @ wx, rtol=1e-5)
    np.testing.assert_allclose(downsample_area_torch(torch.from_numpy(x), 4, 4).numpy(), out, rtol=1e-5)


def test_downsample_identity_and_chunking():
    x = np.random.default_rng(1).random((37, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(downsample_area(x, 8, 8), x)
    np.testing.assert_allclose(downsample_area(x, 2, 2, images_per_chunk=5), downsample_area(x, 2, 2), rtol=1e-6)


def test_upsample_nearest_matches_torch():
    p = torch.randn(2, 3, 5)
    for H, W in ((12, 20), (7, 11)):
        ref = F.interpolate(p[:, None], size=(H, W), mode="nearest")[:, 0]
        np.testing.assert_array_equal(upsample_nearest(p.numpy(), H, W), ref.numpy())
        np.testing.assert_array_equal(upsample_nearest_torch(p, H, W).numpy(), ref.numpy())


def test_down_up_roundtrip_of_blocky_map():
    small = np.random.default_rng(2).random((2, 4, 4)).astype(np.float32)
    big = upsample_nearest(small, 32, 32)
    np.testing.assert_allclose(downsample_area(big, 4, 4), small, rtol=1e-6)
