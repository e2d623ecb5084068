"""Moving between image resolution `(image, H, W)` and a layer's resolution `(image, h, w)`.

Labels go down by area average (a binary mask becomes the fraction of each layer cell that is foreground); predictions
go up by nearest neighbour, source index floor(dst * h / H), the convention of torch's `mode="nearest"`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights: output cell i averages the input pixels it overlaps, weighted by overlap length."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (n_in / n_out)


def downsample_area(labels: Any, h: int, w: int, *, images_per_chunk: int = 16) -> np.ndarray:
    """Area-average `(image, H, W)` labels to `(image, h, w)` float32, reading `images_per_chunk` images at a time.

    Exact for any ratio; integer ratios take a reshape-mean fast path. Already-(h, w) labels are returned as float32.
    """
    n, H, W = labels.shape
    out = np.empty((n, h, w), np.float32)
    ry = rx = None
    if H % h or W % w:
        ry, rx = _area_matrix(h, H).astype(np.float32), _area_matrix(w, W).astype(np.float32)
    for s in range(0, n, images_per_chunk):
        block = np.asarray(labels[s : s + images_per_chunk], dtype=np.float32)
        if (H, W) == (h, w):
            out[s : s + len(block)] = block
        elif ry is None:
            out[s : s + len(block)] = block.reshape(len(block), h, H // h, w, W // w).mean(axis=(2, 4))
        else:
            out[s : s + len(block)] = np.einsum("iy,nyx,jx->nij", ry, block, rx, optimize=True)
    return out


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index for each of `n_out` destination pixels: floor(dst * n_in / n_out) (torch 'nearest')."""
    return np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)


def upsample_nearest(pred: np.ndarray, H: int, W: int) -> np.ndarray:
    """Nearest-neighbour upsampling of `(..., h, w)` predictions to `(..., H, W)`."""
    h, w = pred.shape[-2:]
    if (h, w) == (H, W):
        return pred
    rows, cols = nearest_index(H, h), nearest_index(W, w)
    return np.take(np.take(pred, rows, axis=-2), cols, axis=-1)


def upsample_nearest_torch(pred: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Torch twin of `upsample_nearest` for `(..., h, w)` tensors; differentiable (used by the paper-mode losses)."""
    h, w = pred.shape[-2:]
    if (h, w) == (H, W):
        return pred
    rows = torch.from_numpy(nearest_index(H, h)).to(pred.device)
    cols = torch.from_numpy(nearest_index(W, w)).to(pred.device)
    return pred.index_select(-2, rows).index_select(-1, cols)


def downsample_area_torch(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Torch twin of `downsample_area` for `(batch, H, W)` tensors (used by the edits for image-resolution targets)."""
    n, H, W = labels.shape
    if (H, W) == (h, w):
        return labels
    ry = torch.from_numpy(_area_matrix(h, H)).to(labels)
    rx = torch.from_numpy(_area_matrix(w, W)).to(labels)
    return torch.einsum("iy,nyx,jx->nij", ry, labels, rx)
