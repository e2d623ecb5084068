"""Counterfactual targets for interventions: the original label moved by a translation.

As in the paper, each test image gets `count` targets (5), each a translation (tx, ty) whose components are drawn from
[-high, -low) or [low, high) pixels per 512 px of image size (90 and 120). Saliency targets are the original mask
translated with background filling the vacated area; depth targets are the depth map shifted with the edge row/column
repeated into the vacated area (there is no "background" depth to fill with).

Translations are drawn from a generator seeded by (seed, image id), so an image's targets do not depend on which other
images are in the run or on the order they are processed (a resumed stage redraws exactly the same targets).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from probes.resample import downsample_area

Fill = Literal["zero", "edge"]
REFERENCE_SIZE = 512  # the paper's translation ranges are in pixels of a 512 px image


def draw_translations(image_ids: np.ndarray | list[int], spec, size: tuple[int, int]) -> np.ndarray:
    """Integer pixel translations `(image, target, 2)` as (tx, ty) for images of `size` = (H, W); `spec` has `count`,
    `low`, `high` and `seed` (e.g. `workflows.config.TargetSpec`).

    Magnitudes are uniform in [low, high) * side / 512, signs uniform; rounded to whole pixels."""
    H, W = size
    out = np.empty((len(image_ids), spec.count, 2), np.int64)
    scale = np.array([W, H], np.float64) / REFERENCE_SIZE
    for k, image in enumerate(image_ids):
        rng = np.random.default_rng([spec.seed, int(image)])
        magnitude = rng.uniform(spec.low, spec.high, size=(spec.count, 2)) * scale
        sign = rng.choice([-1.0, 1.0], size=(spec.count, 2))
        out[k] = np.round(sign * magnitude).astype(np.int64)
    return out


def shift_maps(maps: np.ndarray, tx: np.ndarray, ty: np.ndarray, fill: Fill) -> np.ndarray:
    """Shift each map `(image, H, W)` by its own (tx[i], ty[i]) pixels: out[i, y, x] = maps[i, y - ty, x - tx].

    fill "zero": pixels shifted in from outside the frame are 0; "edge": they repeat the nearest edge pixel.
    One gather over all images (no Python loop over images)."""
    maps = np.asarray(maps)
    n, H, W = maps.shape
    tx = np.broadcast_to(np.asarray(tx, np.int64), (n,))
    ty = np.broadcast_to(np.asarray(ty, np.int64), (n,))
    ys = np.arange(H)[None, :] - ty[:, None]  # (image, H) source rows
    xs = np.arange(W)[None, :] - tx[:, None]  # (image, W) source columns
    # Clipping the source index to the frame is exactly edge replication.
    out = maps[np.arange(n)[:, None, None], np.clip(ys, 0, H - 1)[:, :, None], np.clip(xs, 0, W - 1)[:, None, :]]
    if fill == "zero":
        inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
        out = np.where(inside, out, np.zeros((), maps.dtype))
    elif fill != "edge":
        raise ValueError(f"unknown fill {fill!r}; use 'zero' or 'edge'")
    return out


def translate_mask(masks: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Saliency target: masks `(image, H, W)` moved by (tx, ty); uncovered pixels become background (0)."""
    return shift_maps(masks, tx, ty, fill="zero")


def shift_depth(depth: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Depth target: depth maps `(image, H, W)` moved by (tx, ty); uncovered pixels repeat the edge row/column."""
    return shift_maps(depth, tx, ty, fill="edge")


def make_targets(label: np.ndarray, translations: np.ndarray, task: str) -> np.ndarray:
    """All targets of one image: `label (H, W)` and `translations (target, 2)` -> `(target, H, W)` float32.

    Saliency labels are binarised at 0.5 first (the mask the scores compare), so targets are 0/1 masks."""
    n = len(translations)
    if task == "saliency":
        base = (np.asarray(label) > 0.5).astype(np.float32)
        return translate_mask(np.broadcast_to(base, (n, *base.shape)), translations[:, 0], translations[:, 1])
    if task == "depth":
        base = np.asarray(label, np.float32)
        return shift_depth(np.broadcast_to(base, (n, *base.shape)), translations[:, 0], translations[:, 1])
    raise ValueError(f"unknown task {task!r}; use 'saliency' or 'depth'")


def layer_targets(targets: np.ndarray, h: int, w: int) -> np.ndarray:
    """Targets `(image, H, W)` at a layer's resolution `(image, h, w)` by area average (masks become fractions)."""
    return downsample_area(targets, h, w)


def slide_translations(frames: int, size: tuple[int, int], extent: float = 0.3, axis: str = "x") -> np.ndarray:
    """Translations `(frame, 2)` sliding from -extent to +extent of the image side along `axis` (the moving-object
    animation): frame k moves by round(linspace(-extent, extent, frames)[k] * side)."""
    if frames < 2:
        raise ValueError(f"an animation needs at least 2 frames, got {frames}")
    H, W = size
    offsets = np.round(np.linspace(-extent, extent, frames) * (W if axis == "x" else H)).astype(np.int64)
    zeros = np.zeros(frames, np.int64)
    if axis == "x":
        return np.stack([offsets, zeros], axis=1)
    if axis == "y":
        return np.stack([zeros, offsets], axis=1)
    raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
