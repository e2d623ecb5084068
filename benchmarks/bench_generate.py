"""What capture + store writes cost on top of plain generation, on the same model, prompts and batches.

    python benchmarks/bench_generate.py                      # the toy model, 48 toy-world prompts, 15 steps
    python benchmarks/bench_generate.py --model PATH --images 16 --steps 5 --threads 1
    python benchmarks/bench_generate.py --costs costs.json   # measured seconds per image, for `sceneprobe plan`

Runs (1) plain `model.generate` over the run's batches and (2) `workflows.stages.shard.generate_shard` over the same shards
(capture of every hook point and the latent, float16 conversion, Zarr chunk writes, completion records), alternating
`--repeat` times and keeping the fastest of each. Prints both rates, their ratio and the bytes stored per image.
Target on the toy model on CPU: ratio <= 1.25.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workflows.config import PromptsConfig, RunConfig  # noqa: E402
from workflows.stages.shard import describe, generate_shard, load, make_shards  # noqa: E402
from workflows.stages.prompts import toy_captions
from workflows.store import Plan  # noqa: E402
from workflows.store import ShardWriter, bytes_on_disk, create_store  # noqa: E402


def prompts_for(n: int) -> Plan:
    seeds = list(range(n))
    return Plan(toy_captions(seeds), seeds, ["train"] * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--scheduler", default="lms", help="lms (U-Nets), flow_euler (SD3, Flux, the toy DiT), ...")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--compression", default="lz4", choices=("lz4", "zstd", "none"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=None, help="store location (default: a temporary folder)")
    parser.add_argument("--costs", default=None, metavar="FILE",
                        help="write measured costs as JSON (generate_s_per_image, ...) for `sceneprobe plan --costs`")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-generate-")) / "run"
    cfg = RunConfig(model=args.model, scheduler=args.scheduler, steps=args.steps, prompts=PromptsConfig(source="toy"), num_images=args.images,
                    output=str(out), shard_size=args.shard_size, batch_size=args.batch_size,
                    compression=args.compression)
    model = load(cfg, device="auto")
    plan = prompts_for(args.images)
    shards = make_shards(plan, cfg.shard_size)
    layout = describe(model, cfg)
    model.generate(plan.prompts[:1], plan.seeds[:1])  # warm-up: first-call allocations are nobody's cost

    def plain() -> float:
        start = time.perf_counter()
        for shard in shards:
            for a in range(0, len(shard.seeds), cfg.batch_size):
                model.generate(shard.prompts[a:a + cfg.batch_size], shard.seeds[a:a + cfg.batch_size])
        return time.perf_counter() - start

    def captured() -> float:
        if out.exists():
            shutil.rmtree(out)
        create_store(cfg, plan, layout)
        with ShardWriter(cfg.output) as writer:
            start = time.perf_counter()
            for shard in shards:
                generate_shard(model, cfg, shard, writer)
            return time.perf_counter() - start

    times = {"plain": [], "captured": []}
    for _ in range(args.repeat):  # alternate, so drifting machine load hits both alike
        times["plain"].append(plain())
        times["captured"].append(captured())
    t_plain, t_cap = min(times["plain"]), min(times["captured"])
    n = len(plan)
    stored = bytes_on_disk(cfg.output)
    values = sum(h * w * c for h, w, c in layout.acts.values()) * cfg.steps
    print(f"model {args.model}: {n} images, {cfg.steps} steps, batch {cfg.batch_size}, {len(layout.acts)} arrays "
          f"({values / 1e6:.3f} M values per image), torch threads {torch.get_num_threads()}, device {model.device}")
    print(f"plain generation      {t_plain:8.2f} s  {n / t_plain:8.2f} images/s")
    print(f"capture + store       {t_cap:8.2f} s  {n / t_cap:8.2f} images/s")
    print(f"ratio                 {t_cap / t_plain:8.3f}  (target <= 1.25 on the toy model on CPU)")
    print(f"stored                {stored / n / 1e6:8.3f} MB per image ({args.compression}); store at {out}")
    if args.costs:
        costs = {"generate_s_per_image": t_cap / n, "plain_s_per_image": t_plain / n, "bytes_per_image": stored / n,
                 "model": args.model, "steps": cfg.steps, "batch_size": cfg.batch_size, "device": str(model.device)}
        Path(args.costs).write_text(json.dumps(costs, indent=1) + "\n")
        print(f"costs written to {args.costs}")
    if args.out is None:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
