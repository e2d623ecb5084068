"""Training data of the toy LDM: the cached training renders and a deterministic, resumable batch order."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def render_dataset(n: int, path: str | Path, chunk: int = 256) -> Path:
    """Render training scenes 0..n-1 once into `path` (.npz: rgb (scene, 64, 64, 3) uint8, captions (scene,) str)."""
    from ldm.toy.render import render_batch  # deferred: the renderer is only needed when there is no cache

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgbs, caps = [], []
    t0 = time.time()
    for start in range(0, n, chunk):
        b = render_batch(list(range(start, min(n, start + chunk))), size=64)
        rgbs.append(b.rgb)
        caps += list(b.captions)
        done = start + len(b.captions)
        print(f"rendered {done}/{n} scenes  {time.time() - t0:.0f}s", flush=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rgb=np.concatenate(rgbs), captions=np.array(caps))
    tmp.rename(path)
    return path


def load_dataset(data: str, n_scenes: int) -> tuple[np.ndarray, list[str]]:
    """(rgb (scene, 64, 64, 3) uint8, captions) for training scenes 0..n_scenes-1, rendering them into
    `<data>-<n_scenes>.npz` if no cache of at least that many scenes exists."""
    folder, prefix = Path(data).parent, Path(data).name
    sizes = [int(n) for f in folder.glob(f"{prefix}-*.npz") if (n := f.stem.rsplit("-", 1)[1]).isdigit()]
    n = min((s for s in sizes if s >= n_scenes), default=0)
    path = folder / f"{prefix}-{n}.npz" if n else render_dataset(n_scenes, f"{data}-{n_scenes}.npz")
    with np.load(path, allow_pickle=False) as z:  # scenes are seeds 0..n-1 in order, so a prefix is a smaller set
        return z["rgb"][:n_scenes], [str(c) for c in z["captions"][:n_scenes]]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(image, h, w, 3) uint8 -> (image, 3, h, w) float in [-1, 1]."""
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class BatchOrder:
    """Deterministic shuffled epochs over `n` items; its position is part of the resumable state."""

    def __init__(self, n: int, seed: int, position: int = 0) -> None:
        self.n, self.seed, self.position = n, seed, position

    def next(self, batch: int) -> torch.Tensor:
        idx: list[torch.Tensor] = []
        left = batch
        while left > 0:
            epoch, offset = divmod(self.position, self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            take = min(left, self.n - offset)
            idx.append(perm[offset : offset + take])
            self.position += take
            left -= take
        return torch.cat(idx)
