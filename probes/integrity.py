"""Did an edit keep the picture? Distances between an edited image and the unedited one, away from where the edit
was meant to change it, and between the object before and after it moved.

An edit "works" only if the re-labelled image moved towards the target *and* stayed a coherent image: a labeler reads
a white blob or colour noise as a moved object as readily as a real one. These are the distances that rule that out:

* background kept: RMSE (grey levels, 0-255) between the edited and the unedited image outside the moved region
  (saliency: the union of the original and the target mask; depth: where the target depth differs from the original
  by more than `DEPTH_CHANGE` standardised units); the same on any feature maps (e.g. the VAE's latent), with the
  region area-averaged to their grid. The scale to judge them by is the same distance between two unedited images of
  the same prompt with different seeds: what drawing the picture anew changes.
* object kept: total-variation distance (0-1) between the RGB colour histograms of the object's pixels before (the
  unedited image inside the original mask) and after (the edited image inside its own, re-labelled mask: wherever
  the object is now, so that "kept" does not depend on "moved").

Shapes: images `(n, H, W, 3)` uint8 (or one `(H, W, 3)` broadcast), masks and regions `(n, H, W)` bool.
"""

from __future__ import annotations

import numpy as np

from probes.resample import downsample_area

DEPTH_CHANGE = 0.25  # standardised depth: a shifted depth map moves the picture where it differs from the original by more
HISTOGRAM_BINS = 4  # per RGB channel: 64 colours, coarse enough that shading does not count as a change of colour


def moved_region(original: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """`(target, H, W)` bool: where each target asks the picture to change (`original (H, W)`, `targets (target, H,
    W)` in the probes' units: 0/1 masks for saliency, standardised depth)."""
    if task == "saliency":
        return (np.asarray(targets) > 0.5) | (np.asarray(original) > 0.5)[None]
    return np.abs(np.asarray(targets, np.float32) - np.asarray(original, np.float32)[None]) > DEPTH_CHANGE


def masked_rmse(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per image, RMSE between `a (n, H, W, C)` and `b ((n,) H, W, C)` over the pixels where `keep (n, H, W)`, all
    channels; NaN where `keep` is empty."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    sq = (d * d).mean(-1)  # (n, H, W)
    n = keep.reshape(len(keep), -1).sum(1)
    total = np.where(keep, sq, 0.0).reshape(len(keep), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(total / np.maximum(n, 1)), np.nan)


def background_distance(edited: np.ndarray, unedited: np.ndarray, region: np.ndarray) -> np.ndarray:
    """`(n,)` RMSE in grey levels between `edited (n, H, W, 3)` and `unedited ((n,) H, W, 3)` outside `region`."""
    return masked_rmse(edited, unedited, ~np.asarray(region, bool))


def feature_distance(edited: np.ndarray, unedited: np.ndarray, region: np.ndarray) -> np.ndarray:
    """`(n,)` RMSE between feature maps `edited (n, h, w, c)` and `unedited ((n,) h, w, c)` over the cells the image-
    resolution `region (n, H, W)` does not touch at all."""
    h, w = np.asarray(edited).shape[1:3]
    touched = downsample_area(np.asarray(region, np.float32), h, w) > 0
    return masked_rmse(edited, unedited, ~touched)


def colour_histograms(images: np.ndarray, masks: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """`(n, bins**3)` normalised RGB histograms of the pixels inside each mask; NaN rows for empty masks."""
    images = np.asarray(images)
    q = np.minimum(images.astype(np.int64) * bins // 256, bins - 1)  # (n, H, W, 3) bin per channel
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # (n, H, W)
    n = len(code)
    flat = np.where(np.asarray(masks, bool), code, -1).reshape(n, -1)
    counts = np.zeros((n, bins ** 3))
    rows = np.repeat(np.arange(n), flat.shape[1])
    inside = flat.ravel() >= 0
    np.add.at(counts, (rows[inside], flat.ravel()[inside]), 1.0)
    total = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def object_distance(before: np.ndarray, before_mask: np.ndarray, after: np.ndarray, after_masks: np.ndarray,
                    bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """`(n,)` total-variation distance in [0, 1] between the colours of the object in `before (H, W, 3)` inside
    `before_mask (H, W)` and in each `after (n, H, W, 3)` inside `after_masks (n, H, W)`; NaN where a mask is empty."""
    a = colour_histograms(np.asarray(before)[None], np.asarray(before_mask)[None], bins)  # (1, bins**3)
    b = colour_histograms(after, after_masks, bins)
    return 0.5 * np.abs(a - b).sum(1)
