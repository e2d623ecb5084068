"""Do two runs hold the same results? Every Zarr array (main run and variants) compared exactly, and every Parquet
table compared row by row, except the columns that time things (seconds, fit_seconds, edit_seconds).

    python benchmarks/same_results.py runs/demo-before runs/demo     # exit 0 when identical, 1 otherwise

Used to prove a refactor changed no behaviour: run the same config before and after, then compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

TIMING = {"seconds", "fit_seconds", "edit_seconds"}  # wall-clock measurements: never equal across runs


def arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {}
    for name, item in group.members():
        if isinstance(item, zarr.Group):
            out.update(arrays(item, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = item
    return out


def compare_stores(a: Path, b: Path) -> list[str]:
    problems = []
    for store in sorted(p.relative_to(a) for p in a.rglob("store.zarr")):
        left, right = arrays(zarr.open_group(str(a / store), mode="r")), arrays(zarr.open_group(str(b / store), mode="r"))
        if set(left) != set(right):
            problems.append(f"{store}: arrays differ: {sorted(set(left) ^ set(right))}")
        for name in sorted(set(left) & set(right)):
            x, y = left[name][...], right[name][...]
            same = x.shape == y.shape and (np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f"
                                           else np.array_equal(x, y))
            if not same:
                problems.append(f"{store}/{name}: values differ")
    return problems


def same_row(x: dict, y: dict) -> bool:
    """Equal in every column but the timing ones; NaN equals NaN (a metric that could not be computed)."""
    if set(x) != set(y):
        return False
    for k in set(x) - TIMING:
        u, v = x[k], y[k]
        if isinstance(u, float) and isinstance(v, float) and np.isnan(u) and np.isnan(v):
            continue
        if u != v:
            return False
    return True


def compare_tables(a: Path, b: Path) -> list[str]:
    problems = []
    for table in sorted(p.relative_to(a) for p in a.rglob("*.parquet")):
        if not (b / table).exists():
            problems.append(f"{table}: missing in {b}")
            continue
        left, right = pq.read_table(a / table).to_pylist(), pq.read_table(b / table).to_pylist()
        if len(left) != len(right) or any(not same_row(x, y) for x, y in zip(left, right)):
            problems.append(f"{table}: rows differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    problems = compare_stores(args.a, args.b) + compare_tables(args.a, args.b)
    n_arrays = sum(len(arrays(zarr.open_group(str(p), mode="r"))) for p in args.a.rglob("store.zarr"))
    n_tables = len(list(args.a.rglob("*.parquet")))
    print("\n".join(problems) if problems else f"identical: {n_arrays} arrays, {n_tables} tables "
                                                f"(timing columns {', '.join(sorted(TIMING))} excluded)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
