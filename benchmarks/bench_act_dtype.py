"""What the activation storage dtype does to the probes: a probed run's stored float16 activations at each target's
chosen layer (held-out choice, `probes.selection`), at every step, stored again as bfloat16 and as float8 e4m3 with
its per-(image, step, channel) scales (`workflows.store.act_dtype`, the writer's own encoding), then fit and scored
exactly as the grid does, side by side with float16 in one run.

    .venv/bin/python benchmarks/bench_act_dtype.py runs/toy      # a run whose probe stage is done

The target (issue #22): every headline metric within 0.01 of float16's. The comparison is paired: same images, same
split, same probes; only the stored values differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probes.selection import best_layer  # noqa: E402
from workflows.config import ACT_DTYPES, EXTRAS  # noqa: E402
from workflows.stages.grid import ProbeGroup, read_activations, read_metrics  # noqa: E402
from workflows.stages.grid_data import GroupActs, prepare_grid_data  # noqa: E402
from workflows.stages.grid_fit import fit_and_score  # noqa: E402
from workflows.stages.grid_scores import HEADLINE, METRIC_NAMES  # noqa: E402
from workflows.store.act_dtype import decode, encode  # noqa: E402

BYTES = {"float16": 2, "bfloat16": 2, "float8_e4m3": 1}


def stored_as(acts: np.ndarray, dtype: str) -> np.ndarray:
    """`acts (image, h, w, c)` after a round trip through `dtype`'s encoding."""
    values, scale = encode(acts, dtype)
    return decode(values.numpy(), dtype, None if scale is None else scale.numpy()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run whose probe stage is done")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="default: every step")
    args = parser.parse_args()
    rows = read_metrics(args.run).to_pylist()
    data = prepare_grid_data(args.run, n_boot=200)
    every = np.concatenate([data.train, data.test])
    print("| target | layer | metric | dtype | bytes / value | mean over steps | max abs diff from float16 | "
          "fit s |\n|---|---|---|---|---|---|---|---|")
    for target in data.labels:
        metric = METRIC_NAMES[HEADLINE[target]]
        hook = best_layer(rows, target, "ldm", metric, exclude=EXTRAS)
        steps = args.steps if args.steps is not None else sorted({r["step"] for r in rows if r["hook"] == hook})
        scores = {d: [] for d in ACT_DTYPES}
        seconds = dict.fromkeys(ACT_DTYPES, 0.0)
        for step in steps:
            raw = read_activations(args.run, ProbeGroup("ldm", hook, step), every).astype(np.float32)
            for dtype in ACT_DTYPES:
                x = stored_as(raw, dtype)
                start = time.perf_counter()
                row, _ = fit_and_score(GroupActs(x[: len(data.train)], x[len(data.train):], data), target, data)
                seconds[dtype] += time.perf_counter() - start
                scores[dtype].append(row[metric])
        base = np.array(scores["float16"])
        for dtype in ACT_DTYPES:
            values = np.array(scores[dtype])
            print(f"| {target} | {hook} | {metric} | {dtype} | {BYTES[dtype]} | {values.mean():.4f} | "
                  f"{np.abs(values - base).max():.4f} | {seconds[dtype]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
