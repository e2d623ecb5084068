"""The interventions stage over a run's test split: calibration of edit strengths on training images, the edit units
(`workflows.stages.edit_units`), their records and tables. Plain functions; the executor of the units is passed in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from ldm.errors import UserError
from probes.metrics import bootstrap_ci
from workflows.config import InterventionConfig
from workflows.stages.edit_units import (StageInputs, Unit, Worker, calibration_units, colour_check_for, gather_inputs,
                                         load_labelers, make_units, read_unedited, run_unit, store_sink)
from workflows.stages.causal import resolve_causal
from workflows.stages.edits import METRIC
from workflows.stages.shard import load
from workflows.store import Records, load_run_config, open_store, read_file, remove_file, write_atomic, write_table
from workflows.store.paths import (CALIBRATION, CALIBRATION_CHOICE, CALIBRATION_TABLE, INTERVENTION_CONFIG,
                                   INTERVENTION_METRICS, INTERVENTION_RECORDS, INTERVENTION_SUMMARY, INTERVENTIONS,
                                   edited_images)

SUMMARY_FIELDS = ("score_before", "score_after", "gain", "moved", "background_ratio", "latent_ratio",
                  "object_distance", "intact", "success")
# run_units(units, on_done(unit, rows), on_failed(unit, error)): executes units, reporting each as it finishes
UnitRunner = Callable[[list[Unit], Callable[[Unit, list[dict]], None], Callable[[Unit, str], None]], None]


def unit_records(output: str) -> Records:
    """One record per finished unit (its rows), written after its images."""
    return Records(output, INTERVENTION_RECORDS)


def judge(row: dict, cfg: InterventionConfig) -> dict:
    """`row` with whether its edit moved the picture towards the target, kept the rest of it, and so succeeded, by the
    thresholds of `cfg` (fixed before any edit is scored; NaN distances, e.g. an empty object mask, count as not kept):

    moved: saliency Dice(new mask, target) >= success_dice; depth RMSE to the target down by >= success_depth_gain.
    intact: background distance, in pixels and in the VAE's latent, at most background_ratio x the same distance for
    the prompt drawn with another seed; for saliency also the object's colour-histogram distance <= object_distance
    and, where the toy colour reader ran, the caption's colour read inside the edited image's own mask."""
    ratio = lambda a, b: row[a] / row[b] if row[b] > 0 else float("nan")  # noqa: E731 (NaN: no scale to judge by)
    pixels, latent = ratio("background_rmse", "background_rmse_seed"), ratio("background_latent",
                                                                             "background_latent_seed")
    if row["task"] == "saliency":
        moved = row["score_after"] >= cfg.success_dice
        colour = row.get("colour_kept")
        kept = row["object_distance"] <= cfg.object_distance and (colour is None or np.isnan(colour) or colour == 1.0)
    else:
        moved, kept = row["gain"] >= cfg.success_depth_gain, True
    intact = bool(pixels <= cfg.background_ratio and latent <= cfg.background_ratio and kept)
    return {**row, "background_ratio": pixels, "latent_ratio": latent, "moved": float(moved), "intact": float(intact),
            "success": float(moved and intact)}


def choose_strengths(table: list[dict]) -> dict[str, float]:
    """{"task/method": strength} with the highest success rate (moved and intact, `judge`) in a calibration
    `summarise` table; ties: the weaker (where no strength succeeds, the weakest: it breaks the least)."""
    best: dict[str, dict] = {}
    for row in sorted(table, key=lambda r: r["strength"]):
        key = f"{row['task']}/{row['method']}"
        if key not in best or row["success"] > best[key]["success"]:
            best[key] = row
    return {key: float(row["strength"]) for key, row in best.items()}


def prepare_store(output: str, cfg: InterventionConfig, inputs: StageInputs, fresh: bool = False) -> None:
    """Check (or record) the stage config and create the image arrays. A resumed stage must match the data fields."""
    stored = read_file(output, INTERVENTION_CONFIG)
    current = cfg.data_fields()
    if stored is not None and not fresh:
        old = json.loads(stored)
        diff = [k for k in current if old.get(k) != current[k]]
        if diff:
            raise UserError(f"{output}/{INTERVENTIONS} holds interventions made with other settings "
                            f"({', '.join(diff)}); run them with the stored settings, or start over with --fresh")
    if stored is None or fresh:
        unit_records(output).clear()
        remove_file(output, CALIBRATION_CHOICE)  # a fresh stage chooses its strengths again
        write_atomic(output, INTERVENTION_CONFIG, json.dumps(current, indent=1).encode())
    root = open_store(output, mode="r+")
    H, W = inputs.size
    for task in cfg.tasks:
        for method in cfg.methods:
            shape = (inputs.n_images, cfg.targets.count, H, W, 3)
            root.require_array(edited_images(task, method), shape=shape, chunks=(1, *shape[1:]), dtype="uint8",
                               fill_value=0, dimension_names=("image", "target", "y", "x", "rgb"))


def summarise(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (task, method, strength): means with 95% bootstrap intervals over *images* (each image's targets
    are averaged first: the 5 edits of one image share its prompt and seed, so they are not independent)."""
    out = []
    for task, method, strength in sorted({(r["task"], r["method"], r.get("strength") or 0.0) for r in rows}):
        group = [r for r in rows if (r["task"], r["method"], r.get("strength") or 0.0) == (task, method, strength)]
        images = sorted({r["image"] for r in group})
        row = {"task": task, "method": method, "metric": METRIC[task], "strength": strength or None,
               "n_images": len(images), "n_edits": len(group)}
        for name in SUMMARY_FIELDS:
            per_image = [_finite_mean([r.get(name, np.nan) for r in group if r["image"] == i]) for i in images]
            est = bootstrap_ci(per_image, n_boot=n_boot, seed=seed)
            row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        for name in ("edit_norm", "edit_seconds", "seconds"):
            row[name] = float(np.mean([r[name] for r in group]))
        out.append(row)
    return out


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values; NaN when there are none (e.g. an object distance for depth edits)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_tables(output: str, rows: list[dict]) -> list[dict]:
    """`interventions/metrics.parquet` (one row per edit, judged) and `interventions/summary.parquet` (per task,
    method); returns the summary."""
    rows = sorted(rows, key=lambda r: (r["task"], r["method"], r["image"], r["target_index"]))
    summary = summarise(rows) if rows else []
    write_table(output, INTERVENTION_METRICS, rows)
    write_table(output, INTERVENTION_SUMMARY, summary)
    return summary


def write_calibration(output: str, table: list[dict], chosen: dict[str, float]) -> None:
    """`interventions/calibration.parquet` (per task, method and candidate strength, on training images, with the
    chosen row flagged) and `interventions/calibration.json` ({"task/method": strength}, read by the animation)."""
    write_table(output, CALIBRATION_TABLE, [{**r, "chosen": chosen.get(f"{r['task']}/{r['method']}") == r["strength"]}
                                           for r in table])
    write_atomic(output, CALIBRATION_CHOICE, json.dumps(chosen, indent=1).encode())


# ---------------------------------------------------------------- running the stage


@dataclass
class InterventionResult:
    done: int  # units finished in this session
    skipped: int  # units finished earlier (resume)
    failed: dict[str, str]  # unit key -> error
    summary: list[dict]
    config: InterventionConfig  # the settings used, with the calibration's chosen strengths

    @property
    def ok(self) -> bool:
        return not self.failed


def run_interventions(output: str, cfg: InterventionConfig | None = None, *, run_units: UnitRunner | None = None,
                      fresh: bool = False, stream=None, **local) -> InterventionResult:
    """The interventions stage on a generated, labelled and probed run; resumable (finished units are skipped).

    1. `hooks: causal` resolved from the patching map (made on training pairs); gather the test images, labels and
       probes, and check (or record) the stage's settings;
    2. calibration (when `calibrate` is set): every candidate strength on training images, the best kept per method;
    3. the test units at the chosen strengths;
    4. metrics.parquet and summary.parquet from every test unit's rows.

    `run_units(units, on_done, on_failed)` executes units and reports each (`workflows.ray.interventions` passes
    an actor pool's); default: `local_runner(output, cfg, inputs, **local)`, in this process."""
    stream = stream or sys.stderr
    cfg = resolve_causal(output, cfg or InterventionConfig(), stream)  # 1.
    inputs = gather_inputs(output, cfg)
    prepare_store(output, cfg, inputs, fresh=fresh)
    run_units = run_units or local_runner(output, cfg, inputs, **local)
    records = unit_records(output)
    done = records.done()
    failed: dict[str, str] = {}
    counts = {"done": 0, "skipped": 0}

    def execute(units: list[Unit], what: str) -> None:
        todo = [u for u in units if u.key not in done]
        counts["skipped"] += len(units) - len(todo)
        print(f"interventions on {output}: {what}, {len(units)} units ({len(units) - len(todo)} done earlier, "
              f"{len(todo)} to run)", file=stream, flush=True)

        def on_done(unit: Unit, rows: list[dict]) -> None:
            records.write(unit.key, rows)
            done[unit.key] = rows
            counts["done"] += 1

        def on_failed(unit: Unit, error: str) -> None:
            failed[unit.key] = error
            print(f"intervention {unit.key} failed: {error}", file=stream, flush=True)

        if todo:
            run_units(todo, on_done, on_failed)

    calibration = calibration_units(inputs, cfg, read_unedited(output, inputs.train))  # 2.
    if calibration:
        execute(calibration, f"choosing strengths on {len(inputs.train)} training images")
        if failed:
            return InterventionResult(counts["done"], counts["skipped"], failed, [], cfg)
        table = summarise([judge(r, cfg) for u in calibration for r in done[u.key]])
        cfg = replace(cfg, chosen=choose_strengths(table))
        write_calibration(output, table, cfg.chosen)
        for r in table:
            mark = "  <- chosen" if cfg.chosen[f"{r['task']}/{r['method']}"] == r["strength"] else ""
            print(f"calibration {r['task']:8s} {r['method']:11s} x{r['strength']:<4g} gain {r['gain']:+.3f}, moved "
                  f"{r['moved']:.2f}, intact {r['intact']:.2f}, success {r['success']:.2f} on {r['n_images']} "
                  f"training images{mark}", file=stream, flush=True)
    test_units = make_units(inputs, cfg, read_unedited(output, inputs.test))
    execute(test_units, f"{len(inputs.test)} test images x {cfg.targets.count} targets")  # 3.
    rows = [judge(r, cfg) for key, unit_rows in done.items() if not key.startswith(CALIBRATION + "/")
            for r in unit_rows]
    summary = write_tables(output, rows)  # 4.
    print_summary(summary, stream)
    return InterventionResult(counts["done"], counts["skipped"], failed, summary, cfg)


def print_summary(summary: list[dict], stream) -> None:
    """One line per (task, method, strength) of a `summarise` table."""
    for s in summary:
        print(f"{s['task']:8s} {s['method']:11s} x{s['strength'] or 1:<4g} {s['metric']} {s['score_before']:.3f} -> "
              f"{s['score_after']:.3f} (gain {s['gain']:+.3f} [{s['gain_lo']:+.3f}, {s['gain_hi']:+.3f}]); moved "
              f"{s['moved']:.2f}, intact {s['intact']:.2f}, success {s['success']:.2f} "
              f"[{s['success_lo']:.2f}, {s['success_hi']:.2f}] ({s['n_edits']} edits)", file=stream, flush=True)


def local_runner(output: str, cfg: InterventionConfig, inputs: StageInputs, *, model=None,
                 labelers: Mapping[str, Callable] | None = None, labeler_specs: Mapping[str, dict] | None = None,
                 device: str = "auto") -> UnitRunner:
    """Run units one after another in this process; the model and labelers are loaded on first use (`model` and
    `labelers` replace loading them from the run's config and label attributes)."""
    worker: list[Worker] = []

    def run(units: list[Unit], on_done, on_failed) -> None:
        if not worker:
            loaded = model if model is not None else load(load_run_config(output), device=device)
            found = labelers or load_labelers(output, cfg.tasks, labeler_specs, device=str(loaded.device))
            worker.append(Worker(loaded, inputs.probes, dict(found), inputs.scaler, cfg, inputs.hooks,
                                 store_sink(output), colour_check_for(loaded)))
        for unit in units:
            on_done(unit, run_unit(worker[0], unit))

    return run
