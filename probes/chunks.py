"""Streaming over activation arrays in bounded memory.

Activations are read a block of images at a time from anything that slices like a numpy array along its first axis
(numpy array, np.memmap, zarr array, torch tensor), shape `(image, h, w, c)`, float16 or float32. Each block is
converted to a float32 torch matrix `(pixels, c)`; nothing larger than one block is ever materialised.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# ~64 MB of float32 per block: big enough for fast GEMMs, small enough that memory stays flat at SD scale.
DEFAULT_CHUNK_BYTES = 64 << 20


class NonFiniteError(ValueError):
    """Raised when activations, labels or predictions contain NaN/inf. `images` lists the offending image indices."""

    def __init__(self, what: str, images: list[int]):
        self.what = what
        self.images = images
        shown = images[:10]
        more = f" (+{len(images) - len(shown)} more)" if len(images) > len(shown) else ""
        super().__init__(f"non-finite values in {what} for images {shown}{more}")


def to_tensor(x: Any) -> torch.Tensor:
    """A numpy/zarr/torch block as a torch tensor, sharing memory where possible."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))


def check_finite(x: torch.Tensor | np.ndarray, what: str, first_image: int = 0) -> None:
    """Raise NonFiniteError naming the images (first axis, offset by `first_image`) that hold NaN/inf. A numpy array
    is checked as it is (labels read from a store are read-only, which torch.from_numpy warns about)."""
    if isinstance(x, np.ndarray):
        if np.isfinite(x).all():
            return
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))
    else:
        if bool(torch.isfinite(x).all()):
            return
        bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten()
    raise NonFiniteError(what, [first_image + int(i) for i in bad])


def images_per_chunk(shape: tuple[int, ...], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many images of `shape` = (image, h, w, c) fit in `chunk_bytes` as float32 (at least one)."""
    per_image = int(np.prod(shape[1:])) * 4
    return max(1, chunk_bytes // per_image)


def iter_blocks(
    acts: Any,
    select: np.ndarray | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield `(image_indices, x)` blocks of the selected images, x a fresh float32 `(images_in_block, h, w, c)`
    tensor that the caller may modify in place.

    `select` is a boolean mask over images (None = all). Blocks are contiguous ranges of the array (cheap to read from
    chunked stores); unselected images inside a range are dropped after reading. Non-finite activations raise
    NonFiniteError rather than leak into sums.
    """
    n = acts.shape[0]
    step = images_per_chunk(tuple(acts.shape), chunk_bytes)
    for start in range(0, n, step):
        stop = min(n, start + step)
        keep = np.ones(stop - start, bool) if select is None else np.asarray(select[start:stop], bool)
        if not keep.any():
            continue
        raw = to_tensor(acts[start:stop])
        x = raw[torch.from_numpy(keep)] if not keep.all() else raw
        x = x.to(device=device, dtype=torch.float32)
        if x.data_ptr() == raw.data_ptr():  # no conversion happened: copy so callers may work in place
            x = x.clone()
        idx = np.arange(start, stop)[keep]
        # A sum is 40x cheaper than isfinite() and is non-finite whenever any element is; only then look closer
        # (float32 overflow of the sum alone is not an error: the exact check below then finds nothing).
        if not bool(torch.isfinite(x.sum())):
            bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).nonzero().flatten().cpu().numpy()
            if len(bad):
                raise NonFiniteError("activations", [int(i) for i in idx[bad]])
        yield idx, x


@dataclass
class ChannelStats:
    """Per-channel mean and standard deviation over all pixels of the selected images (float64, shape (c,))."""

    mean: np.ndarray
    scale: np.ndarray
    count: int


def _stats_of(blocks: Iterable[torch.Tensor], eps: float = 1e-6) -> ChannelStats:
    """Channel mean/std over float32 `(pixels, c)` blocks. Sums are shifted by the first block's mean so float64
    accumulation stays exact even when a channel's mean dwarfs its spread. Dead channels (std < eps) get scale 1 so
    they stay zero after scaling."""
    shift: torch.Tensor | None = None
    count, s1, s2 = 0, None, None
    for x in blocks:
        if shift is None:
            shift = x.mean(0)
            s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            s2 = torch.zeros_like(s1)
        d = x - shift
        s1 += d.sum(0).double()  # float32 block sums (torch sums pairwise), float64 across blocks
        s2 += (d * d).sum(0).double()
        count += x.shape[0]
    if shift is None:
        raise ValueError("no images selected")
    m = s1 / count
    var = (s2 / count - m * m).clamp_min(0.0)
    mean = (shift.double() + m).cpu().numpy()
    scale = var.sqrt().cpu().numpy()
    scale[scale < eps] = 1.0
    return ChannelStats(mean=mean, scale=scale, count=count)


def channel_stats(
    acts: Any,
    select: np.ndarray | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: str | torch.device = "cpu",
    eps: float = 1e-6,
) -> ChannelStats:
    """Streaming channel mean/std of the selected images of `(image, h, w, c)` activations (see `_stats_of`)."""
    blocks = iter_blocks(acts, select, chunk_bytes=chunk_bytes, device=device)
    return _stats_of((x.reshape(-1, x.shape[-1]) for _, x in blocks), eps)


# Below this many float32 bytes the standardised activations stay resident between passes (toy scale: every Newton
# iteration is then pure compute); above it every pass streams from the store again, so memory stays bounded.
DEFAULT_CACHE_BYTES = 256 << 20


class StandardisedBlocks:
    """Re-iterable `(image_indices, x)` over all images, x float32 `(pixels, c)` standardised with `stats`.

    The first iteration streams (and checks finiteness); if the whole array fits in `cache_bytes` the blocks are kept
    and later iterations replay them. Treat yielded tensors as read-only (they may be cached)."""

    def __init__(
        self,
        acts: Any,
        stats: ChannelStats,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        device: str | torch.device = "cpu",
    ):
        self.acts, self.stats, self.chunk_bytes, self.device = acts, stats, chunk_bytes, device
        self.mu = torch.from_numpy(stats.mean).float().to(device)
        self.sd = torch.from_numpy(stats.scale).float().to(device)
        self.cacheable = int(np.prod(acts.shape)) * 4 <= cache_bytes
        self.cache: list[tuple[np.ndarray, torch.Tensor]] | None = None
        self.memo: dict[Any, Any] = {}  # what probes fit on these blocks compute from x alone (`linear._sums`)

    @classmethod
    def with_stats(
        cls,
        acts: Any,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        device: str | torch.device = "cpu",
    ) -> StandardisedBlocks:
        """Channel statistics (`self.stats`) and the blocks standardised with them. When the float32 activations fit
        in `cache_bytes`, they are read and converted once: the statistics come from that resident copy, which is
        then standardised in place (`channel_stats` and a first pass would read and convert everything twice)."""
        if int(np.prod(acts.shape)) * 4 > cache_bytes:
            return cls(acts, channel_stats(acts, chunk_bytes=chunk_bytes, device=device), chunk_bytes=chunk_bytes,
                       cache_bytes=0, device=device)
        c = acts.shape[-1]
        kept = [(idx, x.reshape(-1, c)) for idx, x in iter_blocks(acts, chunk_bytes=chunk_bytes, device=device)]
        stats = _stats_of(x for _, x in kept)
        blocks = cls(acts, stats, chunk_bytes=chunk_bytes, cache_bytes=cache_bytes, device=device)
        blocks.cache = [(idx, x.sub_(blocks.mu).div_(blocks.sd)) for idx, x in kept]
        return blocks

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self.cache is not None:
            yield from self.cache
            return
        kept: list[tuple[np.ndarray, torch.Tensor]] = []
        c = self.acts.shape[-1]
        for idx, x in iter_blocks(self.acts, chunk_bytes=self.chunk_bytes, device=self.device):
            x = x.reshape(-1, c).sub_(self.mu).div_(self.sd)
            if self.cacheable:
                kept.append((idx, x))
            yield idx, x
        if self.cacheable:
            self.cache = kept


def sample_pixels(
    blocks: StandardisedBlocks, rows_per_image: int, seed: int
) -> tuple[list[tuple[np.ndarray, torch.Tensor]], np.ndarray]:
    """`rows_per_image` random pixels (without replacement, seeded) from every image of `blocks`, kept in memory (a
    copy: streamed blocks are never held).

    Returns blocks `(image_indices, x (len(image_indices) * rows_per_image, c))` in the format of StandardisedBlocks,
    and the flat pixel index of each sampled row, `(image, rows_per_image)`, to gather the matching targets."""
    n, h, w, c = blocks.acts.shape
    rng = np.random.default_rng(seed)
    pix = np.sort(np.argsort(rng.random((n, h * w)), axis=1)[:, :rows_per_image], axis=1)
    sampled = []
    for idx, x in blocks:
        x = x.reshape(len(idx), h * w, c)
        sel = torch.from_numpy(pix[idx]).to(x.device)
        sampled.append((idx, x[torch.arange(len(idx), device=x.device)[:, None], sel].reshape(-1, c)))
    return sampled, pix
