"""Fixed features that carry only where a pixel is, or only where it is and what the caption says: the inputs of the
position and caption controls, probes fit exactly like the others (same trainer, alpha search and scoring).

* Position: the low-frequency 2-D cosine basis of pixel-centre coordinates u, v in [0, 1],
  `cos(pi a u) cos(pi b v)` for 0 <= a, b < FREQUENCIES, without the constant (the probe has a bias). It spans every
  smooth layout prior ("objects sit in the middle", "the floor is near at the bottom"), at any layer resolution, and
  nothing about the image.
* Caption: the text encoder's pooled embedding of the image's caption, reduced to CAPTION_COMPONENTS principal
  components fit on the *training* captions, with the position basis and every product of a component with a basis
  function: `[position (p), caption (k), caption x position (k p)]`. A linear probe on these can put the object where
  the caption says ("a cube left of a cone"), which broadcast caption features alone could not: it is the layout a
  reader of the text and the layout prior could predict, before any image exists.

Features are float32 `(image, h, w, channel)`, like activations, so `fit_probe` and `LinearProbe.predict` take them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREQUENCIES = 6  # per axis: 35 basis functions, detail down to about a sixth of the image
CAPTION_COMPONENTS = 8  # principal components of the training captions' embeddings


def position_basis(h: int, w: int, frequencies: int = FREQUENCIES) -> np.ndarray:
    """`(h, w, frequencies**2 - 1)` float32: cos(pi a u) cos(pi b v) at pixel centres, every (a, b) but (0, 0)."""
    v = (np.arange(h) + 0.5) / h  # (h,) row centres in [0, 1]
    u = (np.arange(w) + 0.5) / w  # (w,) column centres
    rows = np.cos(np.pi * np.arange(frequencies)[:, None] * v[None])  # (b, h)
    cols = np.cos(np.pi * np.arange(frequencies)[:, None] * u[None])  # (a, w)
    basis = np.einsum("bh,aw->hwba", rows, cols).reshape(h, w, -1)  # (h, w, b * a)
    return np.ascontiguousarray(basis[..., 1:], dtype=np.float32)


def position_features(n_images: int, h: int, w: int) -> np.ndarray:
    """The position basis for every image: `(image, h, w, p)` (a broadcast view, no copy)."""
    basis = position_basis(h, w)
    return np.broadcast_to(basis[None], (n_images, *basis.shape))


def with_position_features(acts: np.ndarray) -> np.ndarray:
    """`(image, h, w, c + p)`: activations with the position basis of their own resolution appended, the input of
    a probe that gets position for free (saliency beyond position)."""
    n, h, w, _ = acts.shape
    return np.concatenate([acts, position_features(n, h, w).astype(acts.dtype)], axis=-1)


@dataclass(frozen=True)
class CaptionBasis:
    """Principal directions of caption embeddings, fit on the training captions only."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d) unit rows
    scale: np.ndarray  # (k,) the training projections' standard deviations

    @staticmethod
    def fit(train_embeddings: np.ndarray, k: int = CAPTION_COMPONENTS) -> CaptionBasis:
        """PCA of `(image, d)` training embeddings; k is capped by the number of images - 1 and by d."""
        x = np.asarray(train_embeddings, np.float64)
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = max(1, min(k, len(x) - 1, x.shape[1]))
        scale = s[:k] / np.sqrt(max(len(x) - 1, 1))
        return CaptionBasis(mean, vt[:k], np.where(scale > 1e-12, scale, 1.0))

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """`(image, k)` standardised principal-component scores."""
        return ((np.asarray(embeddings, np.float64) - self.mean) @ self.components.T / self.scale).astype(np.float32)


def caption_features(scores: np.ndarray, h: int, w: int) -> np.ndarray:
    """`(image, h, w, p + k + k p)` float32 from `(image, k)` caption scores: the position basis, the scores broadcast
    over positions, and every product of a score with a basis function."""
    n, k = scores.shape
    basis = position_basis(h, w)  # (h, w, p)
    broadcast = np.broadcast_to(scores[:, None, None, :], (n, h, w, k))
    products = np.einsum("nk,hwp->nhwkp", scores, basis).reshape(n, h, w, -1)  # (image, h, w, k p)
    return np.concatenate([np.broadcast_to(basis[None], (n, *basis.shape)), broadcast, products], axis=-1)
