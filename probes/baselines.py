"""Controls and baselines a probe must beat before its scores mean anything.

* Position only: predict the training split's mean label map for every image. Whatever a probe scores beyond this is
  not explained by "objects tend to sit in the middle, the floor tends to be near".
* Shuffled-label control task (Hewitt & Liang 2019, "selectivity"): the same probe trained on labels permuted across
  training images (a derangement: no image keeps its own label), so it can only learn label statistics and positions,
  not the image's content. Selectivity = task score - control score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probes.fit import Mode, fit_probe
from probes.linear import Kind, LinearProbe
from probes.resample import downsample_area


def position_map(train_labels: Any, *, images_per_chunk: int = 16) -> np.ndarray:
    """Mean label map `(H, W)` float32 over `(image, H, W)` training labels (streamed, float64 sums)."""
    n, H, W = train_labels.shape
    total = np.zeros((H, W), np.float64)
    for s in range(0, n, images_per_chunk):
        total += np.asarray(train_labels[s : s + images_per_chunk], np.float64).sum(0)
    return (total / n).astype(np.float32)


def position_prediction(mean_map: np.ndarray, n_images: int, h: int, w: int) -> np.ndarray:
    """The position-only baseline as a layer-resolution prediction `(image, h, w)` (a broadcast view, no copy), so it
    goes through the same upsampling and scoring as a probe's output."""
    small = downsample_area(np.asarray(mean_map, np.float32)[None], h, w)[0]
    return np.broadcast_to(small, (n_images, h, w))


def with_position(acts: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """`(image, h, w, c + 1)`: activations `(image, h, w, c)` with the mean label map `(H, W)`, area-averaged to
    `(h, w)`, appended as a channel. A probe on these gets position for free, so whatever it scores beyond the map
    (R2 beyond position) comes from the activations; a probe on the activations alone must rediscover position."""
    n, h, w, _ = acts.shape
    small = downsample_area(np.asarray(mean_map, np.float32)[None], h, w)[0].astype(acts.dtype)
    return np.concatenate([acts, np.broadcast_to(small[None, :, :, None], (n, h, w, 1))], axis=-1)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed points (n >= 2): a random cycle order, each image taking the
    next image's label."""
    if n < 2:
        raise ValueError("need at least 2 images to shuffle labels across images")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, np.int64)
    perm[order] = np.roll(order, -1)
    return perm


class PermutedImages:
    """`labels` re-indexed along the first axis by `perm`, lazily: `self[i]` is `labels[perm[i]]`."""

    def __init__(self, labels: Any, perm: np.ndarray):
        self.labels, self.perm = labels, perm
        self.shape = tuple(labels.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        idx = self.perm[key]
        if np.ndim(idx) == 0:
            return np.asarray(self.labels[int(idx)])
        return np.stack([np.asarray(self.labels[int(i)]) for i in idx]) if len(idx) else np.asarray(self.labels[:0])


def fit_control_probe(
    acts: Any, labels: Any, kind: Kind, *, seed: int = 0, mode: Mode = "ours", **kwargs: Any
) -> LinearProbe:
    """The shuffled-label control: `fit_probe` with each training image's labels replaced by another image's."""
    shuffled = PermutedImages(labels, derangement(labels.shape[0], seed))
    return fit_probe(acts, shuffled, kind, mode=mode, seed=seed, **kwargs)


def selectivity(task_score: float, control_score: float) -> float:
    """Hewitt & Liang selectivity: how much the probe's score exceeds the same probe's on the control task."""
    return float(task_score - control_score)
