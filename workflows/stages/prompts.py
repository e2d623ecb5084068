"""Prompts: the run's (prompt, seed, split) items, from files or from the toy world's caption grammar.

The plan is a fixed, ordered list; an image's id is its position in it (train items first, then test). It is stored with
the run (`manifest.parquet` and the store's `prompt`/`seed`/`split` arrays) and a resumed run reuses the stored plan, so
the split never changes on resume.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from ldm.errors import UserError
from workflows.config import RunConfig
from workflows.store import Plan

PROMPT_COLUMNS = ("prompt", "prompts")
SEED_COLUMNS = ("seed", "seeds")
SPLITS = ("train", "test")


class PromptsError(UserError):
    """A prompts source that cannot be used; the message names the file, column or rows."""


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV, Parquet or JSONL file as dicts (CSV cells are strings; quoted commas and quotes are fine)."""
    path = Path(path)
    if not path.is_file():
        hint = " (an environment variable in it is not set)" if "$" in str(path) else ""
        raise PromptsError(f"prompts file {str(path)!r} not found{hint}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise PromptsError(f"{path}:{n}: not valid JSON: {e}") from None
        return rows
    raise PromptsError(f"prompts file {str(path)!r}: unknown format {suffix!r}; use .csv, .parquet or .jsonl")


def _column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    options = (wanted,) if wanted else candidates
    for name in options:
        if name in columns:
            return name
    raise PromptsError(f"prompts file {str(path)!r} has no {what} column (looked for {', '.join(options)}); "
                       f"its columns are: {', '.join(columns) or '(none)'}")


def _seed(value, path: Path, row: int) -> int:
    try:
        seed = int(value)
        if seed != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise PromptsError(f"{path}, row {row}: seed {value!r} is not an integer") from None
    if not 0 <= seed < 2**63:
        raise PromptsError(f"{path}, row {row}: seed {seed} is outside [0, 2**63)")
    return seed


def hash_split(prompt: str, seed: int, test_fraction: float) -> str:
    """A split that depends only on the item, not on row order: the same row is in the same split in every file."""
    h = int.from_bytes(hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def load_file(path: str | Path, cfg: RunConfig, split: str | None = None) -> list[tuple[str, int, str, str]]:
    """Items of one file as (prompt, seed, split, where) tuples; `split` forces the split of every row."""
    path = Path(path)
    p = cfg.prompts
    rows = read_rows(path)
    columns = list(rows[0].keys()) if rows else []
    if not rows:
        raise PromptsError(f"prompts file {str(path)!r} has no rows")
    pc = _column(columns, p.prompt_column, PROMPT_COLUMNS, "prompt", path)
    sc = _column(columns, p.seed_column, SEED_COLUMNS, "seed", path)
    items = []
    for n, row in enumerate(rows, 1):
        prompt, seed = row[pc], _seed(row[sc], path, n)
        if not isinstance(prompt, str):
            raise PromptsError(f"{path}, row {n}: prompt {prompt!r} is not text")
        if split is not None:
            s = split
        elif p.split_column in row:
            s = str(row[p.split_column])
            if s not in SPLITS:
                raise PromptsError(f"{path}, row {n}: split {s!r} is not train or test")
        else:
            s = hash_split(prompt, seed, cfg.test_fraction)
        items.append((prompt, seed, s, f"{path.name} row {n}"))
    return items


def _check_duplicates(items: list[tuple[str, int, str, str]]) -> None:
    seen: dict[tuple[str, int], str] = {}
    dups = []
    for prompt, seed, _, where in items:
        if (prompt, seed) in seen:
            dups.append(f"({prompt[:40]!r}, {seed}) at {seen[(prompt, seed)]} and {where}")
        else:
            seen[(prompt, seed)] = where
    if dups:
        more = f" (and {len(dups) - 3} more)" if len(dups) > 3 else ""
        raise PromptsError("duplicate (prompt, seed) rows would generate the same image twice: "
                           + "; ".join(dups[:3]) + more)


def toy_captions(seeds: list[int]) -> list[str]:
    """Captions of toy-world scenes; imported lazily so that file-based runs never need the toy world."""
    from ldm.toy.render import render_batch

    captions: list[str] = []
    for i in range(0, len(seeds), 256):  # bounded memory: render_batch also draws the scenes
        captions.extend(render_batch(seeds[i:i + 256]).captions)
    return captions


def toy_plan(cfg: RunConfig) -> Plan:
    from ldm.toy.render import HELD_OUT_SEED  # the toy world's convention: scene seeds >= 1e6 are held out

    n = cfg.num_images
    n_test = round(n * cfg.test_fraction)
    first = cfg.prompts.first_seed
    seeds = [first + i for i in range(n - n_test)] + [HELD_OUT_SEED + first + i for i in range(n_test)]
    splits = ["train"] * (n - n_test) + ["test"] * n_test
    return Plan(toy_captions(seeds), seeds, splits)


def check_prompts(cfg: RunConfig) -> None:
    """Refuse a prompts source that cannot be used, before anything starts: files are read and checked exactly as
    `build_plan` reads them. The toy source has nothing to refuse (its inputs are config fields, validated with the
    config), so its captions are not rendered here a second time (about 9 s per 1,000 images)."""
    if cfg.prompts.source == "file":
        build_plan(cfg)


def build_plan(cfg: RunConfig) -> Plan:
    """The ordered (prompt, seed, split) items of a run: train first, then test, each in source order."""
    if cfg.prompts.source == "toy":
        return toy_plan(cfg)
    if cfg.prompts.source != "file":  # an image source: workflows.stages.image_source.run_plan
        raise ValueError(f"prompts.source {cfg.prompts.source} has no prompts plan; use image_source.run_plan")
    p = cfg.prompts
    if p.path:
        items = load_file(p.path, cfg)
    else:
        items = load_file(p.train, cfg, "train") + load_file(p.test, cfg, "test")
    _check_duplicates(items)
    by_split = {s: [it for it in items if it[2] == s] for s in SPLITS}
    if cfg.num_images is not None and cfg.num_images < len(items):
        # A cap keeps the split proportions and takes each split's first rows.
        n_test = round(cfg.num_images * len(by_split["test"]) / len(items))
        by_split = {"train": by_split["train"][:cfg.num_images - n_test], "test": by_split["test"][:n_test]}
    chosen = by_split["train"] + by_split["test"]
    return Plan([it[0] for it in chosen], [it[1] for it in chosen], [it[2] for it in chosen])
