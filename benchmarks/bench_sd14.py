"""SD v1.4-scale measurements on a random-weight pipeline of SD v1.4's exact architecture (no downloads).

    # peak host (and device) memory per generator, batch 1 and 4: plain generation, then all 16 hooks x STEPS steps
    # captured into a local Zarr store
    python benchmarks/bench_sd14.py memory --batch 1 4 --steps 2 --device cpu
    # GPU evidence (fp16, 512 px): images/s plain vs with capture into Zarr, their ratio, and one probe-grid fit
    python benchmarks/bench_sd14.py gpu --images 8 --steps 15

Each memory configuration runs in a fresh subprocess, since peak RSS only grows within a process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.random_init import random_model  # noqa: E402
from workflows.config import PromptsConfig, RunConfig  # noqa: E402
from workflows.generate import Shard, describe, generate_shard  # noqa: E402
from workflows.prompts import Plan  # noqa: E402
from workflows.store import ShardWriter, create_store  # noqa: E402

MODEL = "CompVis/stable-diffusion-v1-4"
PROMPT = "a photograph of an astronaut riding a horse"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def store_for(model, n: int, batch: int, steps: int, output: str) -> tuple[RunConfig, ShardWriter]:
    cfg = RunConfig(model=MODEL, steps=steps, prompts=PromptsConfig(source="file", path="-"), num_images=None,
                    output=output, shard_size=batch, batch_size=batch, hooks=None, extras=[])
    plan = Plan([PROMPT] * n, list(range(n)), ["train"] * n)
    create_store(cfg, plan, describe(model, cfg))
    return cfg, ShardWriter(output)


def measure_memory(batch: int, steps: int, device: str, dtype: str, capture: bool = True) -> dict:
    """One configuration, in this process: load, then generate `batch` images, with capture into a Zarr store or
    plain (`model.generate`, nothing recorded)."""
    model = random_model(MODEL, steps=steps, dtype=dtype, device=device)
    loaded_mb = peak_rss_mb()
    prompts, seeds = [PROMPT] * batch, list(range(batch))
    with tempfile.TemporaryDirectory() as tmp:
        cfg, writer = store_for(model, batch, batch, steps, f"{tmp}/run")
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if capture:
            generate_shard(model, cfg, Shard(0, 0, batch, prompts, seeds), writer)
        else:
            model.generate(prompts, seeds)
        seconds = time.perf_counter() - start
    out = {"mode": "capture" if capture else "plain", "batch": batch, "steps": steps, "device": device,
           "dtype": dtype, "seconds": round(seconds, 1),
           "rss_after_load_mb": round(loaded_mb), "peak_rss_mb": round(peak_rss_mb())}
    out["capture_extra_mb"] = out["peak_rss_mb"] - out["rss_after_load_mb"]
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
    print("\n| mode | batch | steps | device | peak RSS MB | after load MB | extra MB | peak CUDA MB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['steps']} | {r['device']} | {r['peak_rss_mb']} | "
              f"{r['rss_after_load_mb']} | {r['capture_extra_mb']} | {r.get('peak_cuda_mb', '-')} | {r['seconds']} |")


def cmd_gpu(args: argparse.Namespace) -> None:
    """Plain vs captured generation on the same prompts, then one SD-scale probe fit (246 images, 64x64x320)."""
    from probes.fit import fit_probe

    model = random_model(MODEL, steps=args.steps, dtype="float16", device=args.device)
    prompts, seeds = [PROMPT] * args.images, list(range(args.images))
    model.generate(prompts[:1], seeds[:1])  # warm-up: kernels, allocator
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("plain", "capture", "plain_again"):
            sync()
            start = time.perf_counter()
            if label == "capture":
                cfg, writer = store_for(model, args.images, args.batch, args.steps, f"{tmp}/run")
                for a in range(0, args.images, args.batch):
                    shard = Shard(a // args.batch, a, a + args.batch, prompts[a:a + args.batch], seeds[a:a + args.batch])
                    generate_shard(model, cfg, shard, writer)
            else:
                for a in range(0, args.images, args.batch):
                    model.generate(prompts[a:a + args.batch], seeds[a:a + args.batch])
            sync()
            timings[label] = time.perf_counter() - start
    plain = min(timings["plain"], timings["plain_again"])
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((246, 64, 64, 320), dtype=np.float32).astype(np.float16)
    labels = (rng.random((246, 512, 512)) > 0.5).astype(np.float32)
    start = time.perf_counter()
    fit_probe(acts, labels, "saliency", device=args.device)
    fit_seconds = time.perf_counter() - start
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "images": args.images, "steps": args.steps, "batch": args.batch,
              "plain_images_per_s": args.images / plain, "capture_images_per_s": args.images / timings["capture"],
              "capture_ratio": timings["capture"] / plain, "probe_fit_s_64x64x320_246_images": fit_seconds}
    print(json.dumps(result, indent=1))


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
    gpu.set_defaults(func=cmd_gpu)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
