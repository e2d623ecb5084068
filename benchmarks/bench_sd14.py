"""SD v1.4-scale measurements on a random-weight pipeline of SD v1.4's exact architecture (no downloads).

    # peak host (and device) memory per generator, batch 1 and 4: plain generation, then all 16 hooks x STEPS steps
    # captured into a local Zarr store
    python benchmarks/bench_sd14.py memory --batch 1 4 --steps 2 --device cpu
    # GPU evidence (fp16, 512 px): images/s plain, with copies to host only, and with capture into Zarr per
    # COMPRESSION:WRITER_THREADS[:FOLDER], side by side; then SD-scale probe fits, ours vs the paper's trainer
    python benchmarks/bench_sd14.py gpu --images 16 --batch 4 --steps 15 --captures zstd:4 none:4
    # store writes alone at SD v1.4 shapes: direct shard files vs Zarr's write path
    python benchmarks/bench_sd14.py writer --batches 4 --threads 2

Each memory configuration runs in a fresh subprocess, since peak RSS only grows within a process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.architecture import describe_hook_points  # noqa: E402
from ldm.capture import capture  # noqa: E402
from ldm.random_init import random_model  # noqa: E402
from workflows.config import PromptsConfig, RunConfig  # noqa: E402
from workflows.stages.shard import Shard, describe, generate_shard  # noqa: E402
from workflows.store import Plan  # noqa: E402
from workflows.store.staging import HostStaging  # noqa: E402
from workflows.store import Layout, ShardWriter, bytes_on_disk, create_store  # noqa: E402

MODEL = "CompVis/stable-diffusion-v1-4"
PROMPT = "a photograph of an astronaut riding a horse"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """The most host memory held while the block ran, above what was held when it started (sampled every 20 ms):
    unlike peak RSS, not masked by an earlier peak such as model loading."""

    def __enter__(self) -> "RssSampler":
        self.start, self.top, self._stop = rss_mb(), rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.top = max(self.top, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.top = max(self.top, rss_mb())

    @property
    def extra_mb(self) -> int:
        return round(self.top - self.start)


def store_for(n: int, batch: int, steps: int, output: str, layout_of: Callable[[RunConfig], Layout],
              compression: str = "zstd", threads: int = 4, direct: bool = True) -> tuple[RunConfig, ShardWriter]:
    """A fresh store for `n` images of PROMPT in one work shard, and its writer; `layout_of(cfg)` gives the shapes."""
    cfg = RunConfig(model=MODEL, steps=steps, prompts=PromptsConfig(source="file", path="-"), num_images=None,
                    output=output, shard_size=n, batch_size=batch, hooks=None, extras=[], compression=compression)
    create_store(cfg, Plan([PROMPT] * n, list(range(n)), ["train"] * n), layout_of(cfg))
    return cfg, ShardWriter(output, threads=threads, direct=direct)


def measure_memory(batch: int, steps: int, device: str, dtype: str, capture: bool = True) -> dict:
    """One configuration, in this process: load, then generate `batch` images, with capture into a Zarr store or
    plain (`model.generate`, nothing recorded)."""
    model = random_model(MODEL, steps=steps, dtype=dtype, device=device)
    loaded_mb = peak_rss_mb()
    prompts, seeds = [PROMPT] * batch, list(range(batch))
    with tempfile.TemporaryDirectory() as tmp:
        cfg, writer = store_for(batch, batch, steps, f"{tmp}/run", lambda cfg: describe(model, cfg))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with RssSampler() as rss:
            if capture:
                generate_shard(model, cfg, Shard(0, 0, batch, prompts, seeds), writer)
            else:
                model.generate(prompts, seeds)
        seconds = time.perf_counter() - start
        writer.close()
    out = {"mode": "capture" if capture else "plain", "batch": batch, "steps": steps, "device": device,
           "dtype": dtype, "seconds": round(seconds, 1),
           "rss_after_load_mb": round(loaded_mb), "peak_rss_mb": round(peak_rss_mb()), "extra_mb": rss.extra_mb}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def cmd_memory(args: argparse.Namespace) -> None:
    if args.one:  # the child process
        print(json.dumps(measure_memory(args.batch[0], args.steps[0], args.device, args.dtype, not args.plain)))
        return
    rows = []
    for steps in args.steps:
        for batch in args.batch:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "memory", "--one", "--batch", str(batch), "--steps", str(steps),
                       "--device", args.device, "--dtype", args.dtype] + (["--plain"] if mode == "plain" else [])
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.splitlines()[-1]))
                print(rows[-1], flush=True)
    # extra MB: the most host memory held during generation above what was held before it
    print("\n| mode | batch | steps | device | peak RSS MB | after load MB | extra MB | peak CUDA MB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['steps']} | {r['device']} | {r['peak_rss_mb']} | "
              f"{r['rss_after_load_mb']} | {r['extra_mb']} | {r.get('peak_cuda_mb', '-')} | {r['seconds']} |")


def planted_probe_data(n: int, h: int, w: int, c: int, size: int, device: str, seed: int = 0):
    """`(image, h, w, c)` float16 activations with a planted direction, and image-resolution labels it explains:
    masks (z > 0) and depth (z plus noise), z = acts . direction. Drawn on `device` (fast), returned on the host."""
    gen = torch.Generator(device).manual_seed(seed)
    acts = torch.randn(n, h, w, c, generator=gen, device=device, dtype=torch.float16)
    direction = torch.randn(c, generator=gen, device=device) / c**0.5
    z = acts.float() @ direction
    depth = z + 0.5 * torch.randn(z.shape, generator=gen, device=device)
    up = lambda t: torch.nn.functional.interpolate(t[:, None], size=(size, size), mode="nearest")[:, 0]  # noqa: E731
    return acts.cpu().numpy(), up((z > 0).float()).cpu().numpy(), up(depth).cpu().numpy()


def time_probe_fits(n_train: int, n_test: int, device: str, modes: tuple[str, ...]) -> list[dict]:
    """Fit time of one SD-scale (64x64x320 layer) saliency and depth probe on `n_train` images, ours vs the paper's
    trainer, with test Dice / Pearson on `n_test` held-out images of the same planted problem."""
    from probes.fit import fit_probe
    from probes.metrics import score_depth, score_saliency

    acts, masks, depth = planted_probe_data(n_train + n_test, 64, 64, 320, 512, device)
    tr, te = slice(0, n_train), slice(n_train, None)
    rows = []
    for kind, labels in (("saliency", masks), ("depth", depth)):
        for mode in modes:
            sync(device)
            start = time.perf_counter()
            probe = fit_probe(acts[tr], labels[tr], kind, mode=mode, device=device)
            sync(device)
            seconds = time.perf_counter() - start
            if kind == "saliency":
                scores = score_saliency(probe.predict(acts[te]), labels[te], resolutions=("image",))
                score = scores.estimates["image/dice_fg"]
            else:
                scores = score_depth(probe.predict(acts[te]), labels[te], np.zeros((512, 512), np.float32),
                                     resolutions=("image",), ranks=False)
                score = scores.estimates["image/pearson"]
            rows.append({"target": kind, "mode": mode, "fit_s": round(seconds, 2),
                         "metric": "dice_fg" if kind == "saliency" else "pearson", "test": round(score.mean, 3)})
            print(rows[-1], flush=True)
    return rows


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_only(model, prompts: list[str], seeds: list[int], batch: int) -> None:
    """Generation with every activation copied to host memory and dropped: capture's cost without the store."""
    staging = HostStaging()

    def sink(step: int, name: str, act) -> None:
        staging.copy(staging.empty(tuple(act.shape), np.float16, act), act)

    with capture(model, sink):
        for a in range(0, len(prompts), batch):
            model.generate(prompts[a:a + batch], seeds[a:a + batch])
            staging.wait()


def cmd_gpu(args: argparse.Namespace) -> None:
    """Plain vs captured generation on the same prompts (one run, side by side), then SD-scale probe fits."""
    import diffusers

    start = time.perf_counter()
    model = random_model(MODEL, steps=args.steps, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - start
    prompts, seeds = [PROMPT] * args.images, list(range(args.images))
    model.generate(prompts[:args.batch], seeds[:args.batch])  # warm-up: kernels, allocator
    runs = ["plain", "copy_only"] + [f"capture_{spec}" for spec in args.captures] + ["plain_again"]
    timings, store_mb, extra_mb = {}, {}, {}
    for label in runs:
        sync(args.device)
        start = time.perf_counter()
        with RssSampler() as rss:
            if label.startswith("capture_"):
                compression, threads, *where = label.removeprefix("capture_").split(":")
                with tempfile.TemporaryDirectory(dir=where[0] if where else args.tmp) as tmp:
                    cfg, writer = store_for(args.images, args.batch, args.steps, f"{tmp}/run",
                                            lambda cfg, m=model: describe(m, cfg), compression, int(threads))
                    generate_shard(model, cfg, Shard(0, 0, args.images, prompts, seeds), writer)
                    sync(args.device)
                    timings[label] = time.perf_counter() - start  # before sizing and deleting the store
                    store_mb[label] = round(bytes_on_disk(cfg.output) / 2**20)
                    writer.close()
            elif label == "copy_only":
                copy_only(model, prompts, seeds, args.batch)
            else:
                for a in range(0, args.images, args.batch):
                    model.generate(prompts[a:a + args.batch], seeds[a:a + args.batch])
            sync(args.device)
            timings.setdefault(label, time.perf_counter() - start)
        extra_mb[label] = rss.extra_mb
        print(label, round(timings[label], 2), "s", extra_mb[label], "MB", flush=True)
    plain = min(timings["plain"], timings["plain_again"])
    on_cuda = args.device.startswith("cuda")
    result = {
        "device": torch.cuda.get_device_name() if on_cuda else "cpu", "torch": torch.__version__,
        "diffusers": diffusers.__version__, "dtype": args.dtype, "images": args.images, "steps": args.steps,
        "batch": args.batch, "load_s": round(load_s, 1), "seconds": {k: round(v, 2) for k, v in timings.items()},
        "images_per_s": {k: round(args.images / v, 3) for k, v in timings.items()},
        "time_ratio": {k: round(v / plain, 2) for k, v in timings.items()},
        "store_mb": store_mb, "extra_host_mb": extra_mb,
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if on_cuda else None,
        "peak_rss_mb": round(peak_rss_mb()),
    }
    print(json.dumps(result), flush=True)
    del model
    if on_cuda:
        torch.cuda.empty_cache()
    if args.fit_modes:
        result["probe_fits_64x64x320"] = time_probe_fits(args.fit_images, args.test_images, args.device,
                                                         tuple(args.fit_modes))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def disk_floor(folder: str, parts: list[np.ndarray], repeats: int) -> float:
    """MB/s of the output disk itself for the writer's bytes: the same parts written with large buffered writes into
    one file per repeat in `folder`, then fsync: what any writer of these bytes to this folder is bounded by."""
    mb = sum(p.nbytes for p in parts) * repeats / 2**20
    start = time.perf_counter()
    with open(os.path.join(folder, "floor.bin"), "wb", buffering=0) as f:
        for _ in range(repeats):
            for part in parts:
                f.write(memoryview(part).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    os.remove(os.path.join(folder, "floor.bin"))
    return mb / seconds


def cmd_writer(args: argparse.Namespace) -> None:
    """Store writes alone at SD v1.4's shapes (16 hooks, 512 px): direct shard files against Zarr's own write path,
    side by side in one run, from the same host buffers (no model: the rate the writer can sustain), and the disk's
    own floor for the same bytes in the same folder, measured before every writer configuration and after the last
    (a VM disk's rate drifts by several times within minutes: each ratio is against the median floor)."""
    points = [p for p in describe_hook_points(MODEL, 512, 512) if p.kind != "extra"]
    layout = Layout({p.name: (p.height, p.width, p.channels) for p in points}, (512, 512), args.steps)
    rng = np.random.default_rng(0)
    batch = {p.name: rng.standard_normal((args.batch, p.height, p.width, p.channels), np.float32).astype(np.float16)
             for p in points}
    n = args.batch * args.batches
    folder = tempfile.mkdtemp(dir=args.tmp)
    repeats = args.steps * args.batches
    disk_floor(folder, list(batch.values()), repeats)  # untimed: the first large write to a VM disk ran 4-5x slower
    floors = []
    rows = []
    for direct in (True, False):
        for compression in args.compression:
            floors.append(disk_floor(folder, list(batch.values()), repeats))
            with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                _, writer = store_for(n, args.batch, args.steps, f"{tmp}/run", lambda cfg: layout, compression,
                                      args.threads, direct)
                start = time.perf_counter()
                writer.begin()
                for a in range(0, n, args.batch):
                    for step in range(args.steps):
                        for name, act in batch.items():
                            writer.write_act(name, a, step, act)
                writer.complete(0, {"shard": 0})
                seconds = time.perf_counter() - start
                writer.close()
                mb = sum(a.nbytes for a in batch.values()) * args.steps * args.batches / 2**20
                rows.append(("direct" if direct else "zarr", compression, mb, seconds))
                print(f"{rows[-1][0]} {compression}: {mb / seconds:.0f} MB/s", file=sys.stderr, flush=True)
    floors.append(disk_floor(folder, list(batch.values()), repeats))
    os.rmdir(folder)
    floor = float(np.median(floors))
    print(f"disk floor (buffered writes + fsync, same bytes, same folder), before each writer and after the last: "
          f"{', '.join(f'{f:.0f}' for f in floors)} MB/s; median {floor:.0f}\n")
    print("| path | compression | writer threads | MB written | s | MB/s | / floor |\n|---|---|---|---|---|---|---|")
    for path, compression, mb, seconds in rows:
        print(f"| {path} | {compression} | {args.threads} | {mb:.0f} | {seconds:.1f} | {mb / seconds:.0f} | "
              f"{mb / seconds / floor:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    mem.add_argument("--steps", type=int, nargs="+", default=[2])
    mem.add_argument("--device", default="cpu")
    mem.add_argument("--dtype", default="float32")
    mem.add_argument("--modes", nargs="+", choices=("plain", "capture"), default=["plain", "capture"])
    mem.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    mem.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    mem.set_defaults(func=cmd_memory)
    gpu = sub.add_parser("gpu")
    gpu.add_argument("--images", type=int, default=8)
    gpu.add_argument("--batch", type=int, default=4)
    gpu.add_argument("--steps", type=int, default=15)
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--dtype", default="float16")
    gpu.add_argument("--fit-images", type=int, default=246, help="training images per probe (the paper's 246)")
    gpu.add_argument("--test-images", type=int, default=40)
    gpu.add_argument("--fit-modes", nargs="*", choices=("ours", "paper"), default=["ours", "paper"])
    gpu.add_argument("--captures", nargs="+", default=["lz4:4", "none:4", "zstd:4"],
                     help="captures to run side by side, each COMPRESSION:WRITER_THREADS[:FOLDER] (lz4, zstd or none)")
    gpu.add_argument("--tmp", default=None, help="folder for the temporary Zarr store (default: the system's)")
    gpu.add_argument("--json", default=None, help="also write the result here")
    gpu.set_defaults(func=cmd_gpu)
    wr = sub.add_parser("writer")
    wr.add_argument("--batch", type=int, default=4)
    wr.add_argument("--batches", type=int, default=6, help="batches per row; fewer measure fresh buffers' page faults")
    wr.add_argument("--steps", type=int, default=15)
    wr.add_argument("--threads", type=int, default=4)
    wr.add_argument("--compression", nargs="+", choices=("lz4", "zstd", "none"), default=["none", "lz4", "zstd"])
    wr.add_argument("--tmp", default=None)
    wr.set_defaults(func=cmd_writer)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
