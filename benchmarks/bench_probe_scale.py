"""Probe fitting at Stable Diffusion scale in bounded memory, and our probes vs the paper's trainer.

Usage:  .venv/bin/python benchmarks/bench_probe_scale.py            (defaults: SD shapes, ~3 min on 2 cores)
        .venv/bin/python benchmarks/bench_probe_scale.py --images 32  (quick)

1. Writes synthetic float16 activations of SD's 64x64x320 layers (246 images by default, 645 MB) and 512 px labels to a
   temporary folder, block by block, with a planted direction. They are read back through a small array-like that
   reads only the requested images from disk (no memmap), so the process's memory is the probe's working memory.
2. Fits a ridge (depth) and a logistic (saliency) probe, each in a fresh child process, and prints wall time, peak RSS
   above the child's baseline after imports, and the largest tracemalloc (numpy) peak.
3. Times one epoch of the paper-faithful trainer on a sample of images and extrapolates to 30 epochs x all images.
4. Toy scale (200 train / 100 test images, 16x16x64, 64 px labels): ours vs the paper's trainer, test metrics and time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes import fit_probe, position_map, score_depth, score_saliency, train_paper_probe  # noqa: E402
from probes.resample import upsample_nearest  # noqa: E402


class DiskArray:
    """Read-only array-like over a raw C-order file: `x[i]` / `x[a:b]` read just those images with np.fromfile."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.item = int(np.prod(self.shape[1:]))

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.shape[0])
            count = max(0, stop - start)
            out_shape: tuple[int, ...] = (count, *self.shape[1:])
        else:
            start, count, out_shape = int(key), 1, self.shape[1:]
        with open(self.path, "rb") as f:
            data = np.fromfile(f, self.dtype, count * self.item, offset=start * self.item * self.dtype.itemsize)
        return data.reshape(out_shape)


def planted_problem(n: int, h: int, c: int, H: int, seed: int, chunk: int = 8):
    """Yield blocks (acts float16 (k, h, h, c), depth float32 (k, H, H), mask uint8 (k, H, H)) with a planted
    direction. Channels have offsets, unequal scales and a shared low-rank component (like real activations, and so
    that standardisation matters); depth and the mask are linear in the activations plus noise at layer resolution,
    then upsampled to H."""
    rng = np.random.default_rng(seed)
    rank = 16
    mix = rng.standard_normal((rank, c)).astype(np.float32)
    scale = rng.uniform(0.3, 3.0, c).astype(np.float32)
    offset = rng.uniform(-2, 2, c).astype(np.float32)
    u = rng.standard_normal(c).astype(np.float32)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        z = rng.standard_normal((k * h * h, c), dtype=np.float32) * scale
        z += rng.standard_normal((k * h * h, rank), dtype=np.float32) @ mix
        sig = z @ u
        sig = (sig / sig.std()).reshape(k, h, h)
        noise = 0.5 * rng.standard_normal((k, h, h), dtype=np.float32)
        depth = upsample_nearest(sig + noise, H, H).astype(np.float32)
        mask = upsample_nearest((sig + noise > 0.5).astype(np.uint8), H, H)
        yield (z + offset).reshape(k, h, h, c).astype(np.float16), depth, mask


def write_problem(folder: str, n: int, h: int, c: int, H: int, seed: int) -> dict[str, DiskArray]:
    paths = {k: os.path.join(folder, k) for k in ("acts", "depth", "mask")}
    files = {k: open(p, "wb") for k, p in paths.items()}
    for a, d, m in planted_problem(n, h, c, H, seed):
        a.tofile(files["acts"]), d.tofile(files["depth"]), m.tofile(files["mask"])
    for f in files.values():
        f.close()
    return {"acts": DiskArray(paths["acts"], (n, h, h, c), np.float16),
            "depth": DiskArray(paths["depth"], (n, H, H), np.float32),
            "mask": DiskArray(paths["mask"], (n, H, H), np.uint8)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fit_child(arrays: dict[str, DiskArray], kind: str, kwargs: dict, out: Any) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    base = _rss_mb()
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    labels = arrays["depth"] if kind == "depth" else arrays["mask"]
    p = fit_probe(arrays["acts"], labels, kind, **kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, np_peak = tracemalloc.get_traced_memory()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put({"wall_s": wall, "cpu_s": cpu, "rss_base_mb": base, "rss_peak_mb": peak,
             "tracemalloc_peak_mb": np_peak / 2**20,
             "alpha": p.alpha, "method": p.method})


def fit_in_child(arrays: dict[str, DiskArray], kind: str, **kwargs: Any) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_fit_child, args=(arrays, kind, kwargs, q))
    proc.start()
    res = q.get()
    proc.join()
    return res


def toy_comparison(seed: int, paper_epochs: int) -> list[dict]:
    """Ours vs the paper's trainer on 200 train / 100 test toy-sized images (16x16x64 activations, 64 px labels)."""
    blocks = list(planted_problem(300, 16, 64, 64, seed + 1, chunk=300))
    a, depth, mask = blocks[0]
    tr, te = slice(0, 200), slice(200, 300)
    mean_depth = position_map(depth[tr])
    rows = []
    for mode in ("ours", "paper"):
        for kind, labels in (("depth", depth), ("saliency", mask)):
            kw = {"epochs": paper_epochs} if mode == "paper" else {}
            t0 = time.perf_counter()
            p = fit_probe(a[tr], labels[tr].astype(np.float32), kind, mode=mode, seed=seed, **kw)
            wall = time.perf_counter() - t0
            pred = p.predict(a[te])
            if kind == "depth":
                est = score_depth(pred, depth[te], mean_depth, resolutions=("image",), seed=seed).estimates
                metric = {k: est[f"image/{k}"].mean for k in ("rmse", "spearman", "r2_beyond_position")}
            else:
                est = score_saliency(pred, mask[te], resolutions=("image",), seed=seed).estimates
                metric = {k: est[f"image/{k}"].mean for k in ("dice_fg", "iou")}
            rows.append({"mode": mode, "kind": kind, "wall_s": wall, **metric})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=246)
    ap.add_argument("--hw", type=int, default=64)
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--label-res", type=int, default=512)
    ap.add_argument("--paper-sample", type=int, default=16, help="images in the timed paper-trainer epoch")
    ap.add_argument("--toy-paper-epochs", type=int, default=30)
    ap.add_argument("--logistic-alphas", type=float, nargs="*", default=None,
                    help="alpha grid for the SD-scale logistic fit (default: the library default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["ridge", "logistic", "paper", "toy"])
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    n, h, c, H = args.images, args.hw, args.channels, args.label_res
    print(f"# synthetic SD-scale layer: {n} images x {h}x{h}x{c} float16 "
          f"({n * h * h * c * 2 / 2**20:.0f} MB; {n * h * h * c * 4 / 2**20:.0f} MB as float32), labels {H}x{H}")
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        arrays = write_problem(folder, n, h, c, H, args.seed)
        print(f"generated in {time.perf_counter() - t0:.1f} s")
        fits = []
        if "ridge" not in args.skip:
            fits.append(("depth (ridge)", "depth", {}))
        if "logistic" not in args.skip:
            kw = {"alphas": tuple(args.logistic_alphas)} if args.logistic_alphas else {}
            fits.append(("saliency (logistic)", "saliency", kw))
        for name, kind, kw in fits:
            r = fit_in_child(arrays, kind, **kw)
            print(f"{name:20s} wall {r['wall_s']:6.1f} s (cpu {r['cpu_s']:6.1f} s)  "
                  f"peak RSS {r['rss_peak_mb']:6.0f} MB "
                  f"(+{r['rss_peak_mb'] - r['rss_base_mb']:.0f} MB over {r['rss_base_mb']:.0f} MB after imports)  "
                  f"tracemalloc peak {r['tracemalloc_peak_mb']:.0f} MB  alpha {r['alpha']:g}")
        if "paper" not in args.skip:
            k = min(args.paper_sample, n)
            sample = {key: DiskArray(v.path, (k, *v.shape[1:]), v.dtype) for key, v in arrays.items()}
            for kind, labels in (("depth", sample["depth"]), ("saliency", sample["mask"])):
                t0 = time.perf_counter()
                train_paper_probe(sample["acts"], labels, kind=kind, epochs=1)
                per_image_epoch = (time.perf_counter() - t0) / k
                print(f"paper trainer {kind:8s}: {per_image_epoch * 1e3:.0f} ms per image-epoch -> "
                      f"{per_image_epoch * n * 30:.0f} s estimated for 30 epochs x {n} images")
    if "toy" not in args.skip:
        print(f"# toy scale: 200 train / 100 test images, 16x16x64 activations, 64 px labels; "
              f"paper mode {args.toy_paper_epochs} epochs")
        rows = toy_comparison(args.seed, args.toy_paper_epochs)
        for r in rows:
            metrics = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k not in ("mode", "kind", "wall_s"))
            print(f"{r['mode']:5s} {r['kind']:8s} wall {r['wall_s']:6.2f} s  {metrics}")
        for kind in ("depth", "saliency"):
            ours = next(r for r in rows if r["mode"] == "ours" and r["kind"] == kind)
            paper = next(r for r in rows if r["mode"] == "paper" and r["kind"] == kind)
            print(f"speed ratio {kind}: paper / ours = {paper['wall_s'] / ours['wall_s']:.0f}x")


if __name__ == "__main__":
    main()
