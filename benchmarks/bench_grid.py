"""The probe grid against its I/O floor and against the paper's trainer, side by side on one generated store.

Usage:  .venv/bin/python benchmarks/bench_grid.py --run runs/toy            (after `sceneprobe run configs/toy.yaml`)
        .venv/bin/python benchmarks/bench_grid.py --run runs/demo --json runs/bench_grid.json

The run must have finished its generate and label stages. Nothing in it is modified: the grid is fit into a scratch
output whose store, shards, manifest and labels are links to the run's. In one process, one thread:
1. Read floor: one plain sequential read of every activation slice the grid needs (each (hook, step) for every usable
   image, the same `read_activations` call the grid makes), after one untimed pass so that both it and the grid read
   from the page cache.
2. Grid: `run_grid` over every group (all targets, the shuffled-label control), as the probe stage runs it per task.
3. Paper mode: `fit_group` in the paper-faithful trainer's mode on a sample of groups, scaled to the grid, with the
   test metrics of both modes on that sample; and one probe fit alone (no scoring), ours vs paper, on the sample.
4. With `--ray`: the grid again, as the probe stage runs it (one Ray task per group on every local CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread for numpy's BLAS too, as in
    os.environ.setdefault(_var, "1")  # a Ray task (Ray sets these); set before numpy is imported

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.fit import fit_probe  # noqa: E402
from workflows.stages.grid import (  # noqa: E402
    fit_group, plan_groups, prepare_grid_data, read_activations, run_grid,
)

SHARED = ("store.zarr", "shards", "manifest.parquet", "config.yaml", "plan.json", "label_records", "variants")


def scratch_output(run: str, folder: str) -> str:
    """A fresh output in `folder` that links to the run's generated data and labels (probes/ starts empty)."""
    for name in os.listdir(run):
        if name in SHARED or name.endswith(".json"):
            os.symlink(os.path.abspath(os.path.join(run, name)), os.path.join(folder, name))
    return folder


def read_floor(output: str, groups, images: np.ndarray) -> tuple[float, int]:
    """Seconds and bytes of one sequential read of every group's activations."""
    t0, nbytes = time.perf_counter(), 0
    for g in groups:
        nbytes += read_activations(output, g, images).nbytes
    return time.perf_counter() - t0, nbytes


def sample_metrics(rows: list[dict]) -> dict[str, float]:
    """Mean test metric of the model's own probes: Dice for saliency, R2 beyond position for depth."""
    out = {}
    for target, metric in (("saliency", "dice"), ("depth", "r2_pos")):
        vals = [r[metric] for r in rows if r["target"] == target and r["variant"] == "ldm" and r.get("error") is None]
        if vals:
            out[f"{target}_{metric}"] = float(np.mean(vals))
    return out


def probe_fit_times(output: str, groups, data) -> dict[str, tuple[float, float]]:
    """Mean seconds of one probe fit alone (no scoring) per target, ours vs the paper's trainer, on `groups`."""
    times: dict[str, list[list[float]]] = {t: [[], []] for t in data.labels}
    for g in groups:
        acts = read_activations(output, g, data.train)
        for target, (labels, _) in data.labels.items():
            for k, mode in enumerate(("ours", "paper")):
                t0 = time.perf_counter()
                fit_probe(acts, labels, target, mode=mode, seed=data.seed)
                times[target][k].append(time.perf_counter() - t0)
    return {t: (float(np.mean(o)), float(np.mean(p))) for t, (o, p) in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/toy", help="a run output with generate and label done")
    ap.add_argument("--targets", nargs="+", default=["saliency", "depth"])
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per metric (the config default)")
    ap.add_argument("--paper-sample", type=int, default=4, help="groups fit in paper mode, scaled to the grid")
    ap.add_argument("--ray", action="store_true", help="also time the grid on a local Ray cluster (all CPUs)")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if not os.path.isdir(os.path.join(args.run, "store.zarr")):
        sys.exit(f"error: {args.run} has no store.zarr; run `sceneprobe run configs/toy.yaml` first (or pass --run)")
    with (tempfile.TemporaryDirectory() as ours_dir, tempfile.TemporaryDirectory() as paper_dir,
          tempfile.TemporaryDirectory() as ray_dir):
        output = scratch_output(args.run, ours_dir)
        data = prepare_grid_data(output, tuple(args.targets), n_boot=args.bootstrap)
        groups = plan_groups(output)
        images = np.concatenate([data.train, data.test])
        print(f"# {args.run}: {len(groups)} groups (hook x step), {len(data.train)} train / {len(data.test)} test "
              f"images, targets {', '.join(args.targets)}, {args.bootstrap} bootstrap resamples, 1 thread")
        read_floor(output, groups, images)  # warm the page cache
        floor_s, nbytes = read_floor(output, groups, images)
        print(f"read floor: {floor_s:7.2f} s  ({nbytes / 2**20:.0f} MiB decoded, {nbytes / 2**20 / floor_s:.0f} MiB/s)")
        t0 = time.perf_counter()
        table = run_grid(output, groups, data)
        grid_s = time.perf_counter() - t0
        print(f"grid:       {grid_s:7.2f} s  ({table.num_rows} probes, {grid_s / floor_s:.1f}x the read floor)")
        fit_s = float(np.nansum(table.column("fit_seconds").to_numpy(zero_copy_only=False)))
        print(f"  of which fitting + scoring (incl. bootstrap): {fit_s:.2f} s; "
              f"reading, writing weights and rows: {grid_s - fit_s:.2f} s")

        paper_data = prepare_grid_data(scratch_output(args.run, paper_dir), tuple(args.targets),
                                       mode="paper", n_boot=args.bootstrap)
        rng = np.random.default_rng(0)
        sample = [groups[i] for i in sorted(rng.choice(len(groups), min(args.paper_sample, len(groups)), replace=False))]
        t0 = time.perf_counter()
        paper_rows = [r for g in sample for r in fit_group(paper_dir, g, paper_data)]
        paper_s = (time.perf_counter() - t0) * len(groups) / len(sample)
        keys = {(g.hook, g.step) for g in sample}
        ours_rows = [r for r in table.to_pylist() if (r["hook"], r["step"]) in keys]
        ours_m, paper_m = sample_metrics(ours_rows), sample_metrics(paper_rows)
        print(f"paper mode: {paper_s:7.2f} s  estimated for the grid from {len(sample)} groups "
              f"({paper_s / grid_s:.1f}x the grid; scoring and I/O are the same in both)")
        fit_times = probe_fit_times(output, sample, data)
        for target, (ours_t, paper_t) in fit_times.items():
            print(f"  one {target} probe fit alone: ours {ours_t * 1e3:.0f} ms, paper {paper_t * 1e3:.0f} ms "
                  f"({paper_t / ours_t:.0f}x)")
        for key in ours_m:
            print(f"  on the sample, {key}: ours {ours_m[key]:.3f}  paper {paper_m.get(key, float('nan')):.3f}")
        result = {"run": args.run, "groups": len(groups), "probes": table.num_rows, "read_floor_s": floor_s,
                  "read_bytes": nbytes, "grid_s": grid_s, "fit_and_score_s": fit_s, "paper_estimate_s": paper_s,
                  "grid_over_floor": grid_s / floor_s, "paper_over_grid": paper_s / grid_s,
                  "sample_metrics": {"ours": ours_m, "paper": paper_m}, "fit_times": fit_times}
        if args.ray:
            import ray

            from workflows.ray.tasks import fit_groups_with_ray
            from workflows.ray.session import ensure_ray

            ray_out = scratch_output(args.run, ray_dir)
            ensure_ray()
            t0 = time.perf_counter()
            run_grid(ray_out, groups, data, fit_many=fit_groups_with_ray(ray_out, data))
            ray_s = time.perf_counter() - t0
            cpus = int(ray.cluster_resources().get("CPU", 0))
            print(f"grid on Ray ({cpus} CPUs): {ray_s:7.2f} s  ({ray_s / floor_s:.1f}x the read floor)")
            result.update(ray_grid_s=ray_s, ray_cpus=cpus)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
