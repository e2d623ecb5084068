"""Baselines and controls a normal or light probe must beat (the vector twins of `probes.baselines`).

* Position only, normals: at every pixel, the spherical mean of the training images' valid normals there,
      m(u, v) = sum_i q_i(u, v) n_i(u, v) / |sum_i q_i(u, v) n_i(u, v)|,
  the unit vector with the largest summed cosine to them (the best constant a predictor that knows only the pixel
  can give, under the cosine); pixels where no training image has a normal get the spherical mean over all valid
  pixels. "Floors face up at the bottom of the frame, walls face the camera at the top" scores here, not beyond it.
* Position only, light: the spherical mean of the training images' directions ("the light comes from above").
* Position for free (`with_normal_map`): the map appended to the activations as three channels, so a probe need not
  rediscover position from the activations to match it.
* Shuffled-label control (Hewitt & Liang 2019): the same probe fit with each training image's normals (with their
  valid mask) or direction replaced by another training image's (a derangement), so it can learn the labels'
  statistics but not the image's content.

All are fit on training images only; the mean maps stream `images_per_chunk` images at a time (float64 sums of
(H, W, 3)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probes.baselines import PermutedImages, derangement
from probes.resample import downsample_area
from probes.vectors import VectorProbe, check_normals, fit_direction_ridge, fit_normal_ridge, unit


def mean_normal_map(train_normals: Any, train_valid: Any, *, images_per_chunk: int = 16) -> np.ndarray:
    """Position-only normals `(H, W, 3)` float32 unit, from `(image, H, W, 3)` training normals and their valid
    mask `(image, H, W)` (see the module docstring)."""
    n, H, W = train_valid.shape
    total = np.zeros((H, W, 3), np.float64)
    for s in range(0, n, images_per_chunk):
        nb = np.asarray(train_normals[s : s + images_per_chunk], np.float64)
        vb = np.asarray(train_valid[s : s + images_per_chunk], bool)
        check_normals(nb, vb, first_image=s)
        total += np.where(vb[..., None], nb, 0.0).sum(0)
    overall = unit(total.sum((0, 1)), 1e-9)
    if not overall.any():
        overall = np.array([0.0, 0.0, 1.0])  # no valid normal at all: facing the camera
    norm = np.linalg.norm(total, axis=-1, keepdims=True)
    return np.where(norm > 1e-9, total / np.maximum(norm, 1e-9), overall).astype(np.float32)


def normal_position_prediction(mean_map: np.ndarray, n_images: int, h: int, w: int) -> np.ndarray:
    """The position-only normals as a layer-resolution prediction `(image, h, w, 3)` (a broadcast view), scored like
    a probe's output: the map area-averaged to (h, w) and renormalised."""
    m = np.asarray(mean_map, np.float32).transpose(2, 0, 1)  # (3, H, W)
    small = unit(downsample_area(m, h, w).transpose(1, 2, 0), 1e-9)
    return np.broadcast_to(small, (n_images, h, w, 3))


def mean_direction(train_directions: Any) -> np.ndarray:
    """Position-only direction `(k,)` float32: the spherical mean of `(image, k)` training directions."""
    d = np.asarray(train_directions, np.float64)
    check_normals(d[:, None, None], np.ones((len(d), 1, 1), bool), "directions")
    m = unit(d.sum(0), 1e-9)
    return (m if m.any() else np.eye(d.shape[1])[-1]).astype(np.float32)


def direction_position_prediction(mean: np.ndarray, n_images: int) -> np.ndarray:
    """The mean direction as a per-image prediction `(image, k)` (a broadcast view)."""
    return np.broadcast_to(np.asarray(mean, np.float32), (n_images, len(mean)))


def fit_normal_control(acts: Any, normals: Any, valid: Any, *, seed: int = 0, **kwargs: Any) -> VectorProbe:
    """Shuffled-label control of `fit_normal_ridge`: each training image's normals and mask are another's."""
    perm = derangement(normals.shape[0], seed)
    return fit_normal_ridge(acts, PermutedImages(normals, perm), PermutedImages(valid, perm), seed=seed, **kwargs)


def fit_direction_control(features: Any, directions: Any, *, seed: int = 0, **kwargs: Any) -> VectorProbe:
    """Shuffled-label control of `fit_direction_ridge`: each training image's direction is another's."""
    d = np.asarray(directions)
    return fit_direction_ridge(features, d[derangement(len(d), seed)], seed=seed, **kwargs)


def with_normal_map(acts: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """`(image, h, w, c + 3)`: activations `(image, h, w, c)` with the position-only normals (`mean_normal_map`,
    area-averaged to `(h, w)` and renormalised) appended as three channels, the vector twin of
    `baselines.with_position`: a probe on these gets position for free, so what it gains over the map comes from the
    activations."""
    n, h, w, _ = acts.shape
    small = normal_position_prediction(mean_map, 1, h, w)[0].astype(acts.dtype)  # (h, w, 3)
    return np.concatenate([acts, np.broadcast_to(small[None], (n, h, w, 3))], axis=-1)
