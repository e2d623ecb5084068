"""Interventions: edit activations so a probe reads a counterfactual, finish the generation, re-label, score.

For each test image and task, `TargetSpec.count` targets (the image's own label translated, `workflows.targets`) are
rendered in one batch with the image's prompt and seed. At the chosen (hook, step) pairs the conditional half of the
activation is replaced by an edited one (`ldm.edit.edit`), by one of three methods (`probes.edits`):

* `paper`: Adam on the activation itself (lr 5e-3, 128 iterations) until the probe reads the target;
* `closed-form`: the smallest per-position edit that makes the linear probe read the target exactly;
* `random`: at each position a move of the same L2 norm as the closed-form (or paper) edit, in a random direction.

The edited images are re-labelled with the labeler the probes were trained on and scored: saliency Dice(new mask,
target) against Dice(original mask, target); depth RMSE(new depth, target) against RMSE(original depth, target), in
the probes' standardised depth units. Everything here is plain functions (the stage is `run_interventions`);
`workflows.ray_interventions` runs the same units on a Ray actor pool.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ldm.errors import UserError
from probes.linear import LinearProbe
from probes.metrics import DepthScaler, bootstrap_ci
from workflows.edit_generation import METRIC, EditStats, ProbeTable, run_edit, run_edits, score, standardise
from workflows.grid import load_probe, prepare_grid_data, read_metrics
from workflows.intervention_config import TASKS, InterventionConfig, default_hooks
from workflows.labels import load_labeler
from workflows.store import load_layout, load_plan, load_run_config, open_store, read_file, write_atomic
from workflows.targets import draw_translations, make_targets

__all__ = ["InterventionConfig", "TASKS", "default_hooks", "run_interventions", "run_edit", "run_edits",
           "run_unit", "gather_inputs"]

# ---------------------------------------------------------------- one unit of work: (task, method, image)


@dataclass
class Unit:
    """All targets of one image for one task, method and strength: one batched generation, one record. Test images
    are the stage's results; training images (`calibration`) only choose the strength, and their images are not kept."""
    task: str
    method: str
    image: int
    prompt: str
    seed: int
    label: np.ndarray  # (H, W) the image's own label in the probes' units (0/1 mask, or standardised depth)
    translations: np.ndarray  # (target, 2) tx, ty in pixels
    strength: float = 1.0
    calibration: bool = False

    @property
    def key(self) -> str:
        if self.calibration:
            return f"{CALIBRATION}/{self.task}/{self.method}/x{self.strength:g}/{self.image:06d}"
        return f"{self.task}/{self.method}/{self.image:06d}"


@dataclass
class Worker:
    """What a unit needs: the model, the probes per task, the labelers per task, the depth scaler, the config, and
    where edited images go (`sink(unit, images)`, e.g. the Zarr store)."""

    model: object
    probes: dict[str, ProbeTable]
    labelers: dict[str, Callable[[np.ndarray], np.ndarray]]
    scaler: DepthScaler | None
    cfg: InterventionConfig
    hooks: dict[str, list[str]]
    sink: Callable[[Unit, np.ndarray], None] | None = None


def run_unit(worker: Worker, unit: Unit) -> list[dict]:
    """Edit, generate, re-label and score every target of `unit`; returns one row per target (see docs)."""
    cfg, task = worker.cfg, unit.task
    original = np.asarray(unit.label, np.float32)
    targets = make_targets(original, unit.translations, task)
    stats = EditStats(norm=np.zeros(len(targets)))
    start = time.perf_counter()
    images = run_edits(worker.model, worker.probes[task], unit.method, targets, unit.prompt, unit.seed, task,
                       hooks=worker.hooks[task], steps=cfg.steps(task), lr=cfg.lr, iters=cfg.iters,
                       random_reference=cfg.random_reference, strength=unit.strength,
                       units=cfg.closed_form_units,
                       edit_seed_base=cfg.targets.seed, image=unit.image, stats=stats)
    seconds = time.perf_counter() - start
    new = standardise(task, worker.labelers[task](images), worker.scaler)
    scores = score(task, new, original, targets)
    if worker.sink is not None and not unit.calibration:
        worker.sink(unit, images)
    n = len(targets)
    return [{"image": unit.image, "seed": int(unit.seed), "prompt": unit.prompt, "target_index": k, "task": task,
             "method": unit.method, "metric": METRIC[task], "strength": unit.strength,
             "tx": int(unit.translations[k, 0]), "ty": int(unit.translations[k, 1]),
             **{name: float(v[k]) for name, v in scores.items()},
             "edit_norm": float(stats.norm[k]), "edit_seconds": stats.seconds / n, "seconds": seconds / n}
            for k in range(n)]


# ---------------------------------------------------------------- the stage over a run's test split

ROOT = "interventions"  # <output>/interventions/: config.json, records/, metrics.parquet, summary.parquet
CALIBRATION = "calibration"  # records/calibration/..., calibration.parquet and calibration.json beside them
EXTRAS = ("vae_mid", "latent", "x0")
SUMMARY_FIELDS = ("score_before", "score_after", "gain", "success")


@dataclass
class StageInputs:
    """Everything the units of a stage are made from; labels are in the probes' units (`workflows.grid.GridData`)."""
    test: np.ndarray  # (image,) test image ids
    prompts: list[str]
    seeds: list[int]
    labels: dict[str, np.ndarray]  # task -> (image, H, W) for the test images, in order
    train: np.ndarray  # (image,) the first `calibrate_images` training image ids (calibration only)
    train_prompts: list[str]
    train_seeds: list[int]
    train_labels: dict[str, np.ndarray]  # task -> (image, H, W) for `train`
    probes: dict[str, dict[tuple[str, int], LinearProbe]]
    hooks: dict[str, list[str]]
    scaler: DepthScaler | None
    n_images: int  # images in the run (the store arrays are indexed by run image id)
    size: tuple[int, int]


def images_path(task: str, method: str) -> str:
    """Where a (task, method)'s edited images live in the store: `(image, target, y, x, rgb)` uint8."""
    return f"{ROOT}/{task}/{method}/images"


def check_probes(output: str, cfg: InterventionConfig, task: str, hooks: list[str]) -> None:
    """Fail early, naming the stage to run or the missing (hook, step) pairs and what exists."""
    table = read_metrics(output).to_pylist()  # raises naming the probe stage when there are none
    ok = {(r["hook"], r["step"]) for r in table
          if r["variant"] == cfg.variant and r["target"] == task and r["error"] is None}
    missing = [f"{h}@{s}" for h in hooks for s in cfg.steps(task) if (h, s) not in ok]
    if missing:
        have = sorted({s for _, s in ok})
        raise UserError(f"no fitted {cfg.variant} {task} probe for {', '.join(missing)} (hook@step); probed steps: "
                        f"{have or 'none'}. Fit them with the probe stage, or choose other {task}_hooks/_steps")


def gather_inputs(output: str, cfg: InterventionConfig) -> StageInputs:
    """Test images, their labels, the probes and hooks per task, from a run that has been labelled and probed."""
    run_cfg = load_run_config(output)
    plan = load_plan(output)
    if "test" not in plan.splits:
        raise UserError(f"{output!r} has an empty test split: interventions edit test images only; make a run with "
                        "test images (test_fraction > 0, or a test prompts file)")
    layout = load_layout(output)
    unet = [h for h in layout.acts if h not in EXTRAS]
    hooks = {t: list(unet if cfg.hooks(t) == "all" else cfg.hooks(t) or default_hooks(t, unet)) for t in cfg.tasks}
    for task in cfg.tasks:
        bad = [s for s in cfg.steps(task) if not 0 <= s < run_cfg.steps]
        if bad or not cfg.steps(task) or not hooks[task]:
            raise UserError(f"{task}: need hooks and steps within 0..{run_cfg.steps - 1}; got hooks "
                            f"{hooks[task]}, steps {cfg.steps(task)}")
        check_probes(output, cfg, task, hooks[task])
    data = prepare_grid_data(output, targets=tuple(cfg.tasks))
    test = data.test if cfg.max_images is None else data.test[: cfg.max_images]
    if len(test) == 0:
        raise UserError(f"{output!r} has no labelled test images to edit (max_images={cfg.max_images})")
    probes = {t: {(h, s): load_probe(output, cfg.variant, t, h, s) for h in hooks[t] for s in cfg.steps(t)}
              for t in cfg.tasks}
    train = data.train[: cfg.calibrate_images] if cfg.calibrate else data.train[:0]
    return StageInputs(test=test, prompts=[plan.prompts[i] for i in test], seeds=[plan.seeds[i] for i in test],
                       labels={t: data.labels[t][1][: len(test)] for t in cfg.tasks},
                       train=train, train_prompts=[plan.prompts[i] for i in train],
                       train_seeds=[plan.seeds[i] for i in train],
                       train_labels={t: data.labels[t][0][: len(train)] for t in cfg.tasks}, probes=probes,
                       hooks=hooks, scaler=data.depth_scaler, n_images=len(plan), size=tuple(layout.image))


def make_units(inputs: StageInputs, cfg: InterventionConfig) -> list[Unit]:
    """Every (task, method, test image) unit, with the image's seeded translations and the method's strength."""
    moves = draw_translations(inputs.test, cfg.targets, inputs.size)
    return [Unit(task, method, int(image), inputs.prompts[k], int(inputs.seeds[k]), inputs.labels[task][k], moves[k],
                 strength=cfg.strength_of(task, method))
            for task in cfg.tasks for method in cfg.methods for k, image in enumerate(inputs.test)]


def calibration_units(inputs: StageInputs, cfg: InterventionConfig) -> list[Unit]:
    """Every (task, calibrated method, candidate strength, training image) unit: targets drawn as for test images."""
    moves = draw_translations(inputs.train, cfg.targets, inputs.size)
    return [Unit(task, method, int(image), inputs.train_prompts[k], int(inputs.train_seeds[k]),
                 inputs.train_labels[task][k], moves[k], strength=float(strength), calibration=True)
            for task in cfg.tasks for method in cfg.calibrated_methods(task) for strength in cfg.calibrate[task]
            for k, image in enumerate(inputs.train)]


def choose_strengths(table: list[dict]) -> dict[str, float]:
    """{"task/method": strength} with the highest mean gain in a calibration `summarise` table (ties: the weaker)."""
    best: dict[str, dict] = {}
    for row in sorted(table, key=lambda r: r["strength"]):
        key = f"{row['task']}/{row['method']}"
        if key not in best or row["gain"] > best[key]["gain"]:
            best[key] = row
    return {key: float(row["strength"]) for key, row in best.items()}


def labeler_spec(output: str, task: str) -> dict:
    """The `workflows.labels.load_labeler` arguments that re-create the labeler the run's labels came from."""
    attrs = dict(open_store(output)[f"labels/{task}"].attrs)
    name, version = attrs.get("labeler", ""), attrs.get("version", "")
    if name.startswith("toy-"):
        return {"kind": "toy"}
    kind = "hf" if name == "hf-saliency" else name
    return {"kind": kind, "checkpoint": version.rsplit("@", 1)[0] or None}


def load_labelers(output: str, tasks: Sequence[str], specs: Mapping[str, dict] | None = None,
                  device: str = "cpu") -> dict:
    """The labelers the run's labels were made with (checked by version), so edits are scored like the probes."""
    out = {}
    for task in tasks:
        spec = dict((specs or {}).get(task) or labeler_spec(output, task))
        labeler = load_labeler(task, device=device, **spec)
        stored = open_store(output)[f"labels/{task}"].attrs.get("version")
        if stored != labeler.version:
            raise UserError(f"labels/{task} were made by {stored}, but {labeler.version} was loaded; the edited images "
                            "must be re-labelled by the same labeler as the probes were trained on")
        out[task] = labeler
    return out


# ---------------------------------------------------------------- results on disk: images, records, tables


def store_sink(output: str) -> Callable[[Unit, np.ndarray], None]:
    """Write a unit's edited images into its store chunk (one chunk per unit: one writer each)."""
    root = open_store(output, mode="r+")
    return lambda unit, images: root[images_path(unit.task, unit.method)].__setitem__(unit.image, images)


def prepare_store(output: str, cfg: InterventionConfig, inputs: StageInputs, fresh: bool = False) -> None:
    """Check (or record) the stage config and create the image arrays. A resumed stage must match the data fields."""
    stored = read_file(output, f"{ROOT}/config.json")
    current = cfg.data_fields()
    if stored is not None and not fresh:
        # stages recorded before these fields existed used strength 1 and raw units
        old = {"strength": 1.0, "closed_form_units": "raw", "calibrate": None, "calibrate_images": 8,
               **json.loads(stored)}
        diff = [k for k in current if old.get(k) != current[k]]
        if diff:
            raise UserError(f"{output}/{ROOT} holds interventions made with other settings ({', '.join(diff)}); "
                            "run them with the stored settings, or start over with --fresh")
    if stored is None or fresh:
        _clear_records(output)
        write_atomic(output, f"{ROOT}/config.json", json.dumps(current, indent=1).encode())
    root = open_store(output, mode="r+")
    H, W = inputs.size
    for task in cfg.tasks:
        for method in cfg.methods:
            shape = (inputs.n_images, cfg.targets.count, H, W, 3)
            root.require_array(images_path(task, method), shape=shape, chunks=(1, *shape[1:]), dtype="uint8",
                               fill_value=0, dimension_names=("image", "target", "y", "x", "rgb"))


def _records_dir(output: str):
    fs, root = fsspec.core.url_to_fs(output)
    return fs, f"{root.rstrip('/')}/{ROOT}/records"


def _clear_records(output: str) -> None:
    """Remove every record and the calibration's choice (a fresh stage chooses again)."""
    fs, base = _records_dir(output)
    for path in (base, f"{base.rsplit('/', 1)[0]}/{CALIBRATION}.json"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def finished_units(output: str) -> dict[str, list[dict]]:
    """{unit key: rows} for every unit whose record exists (the record is written after its images)."""
    fs, base = _records_dir(output)
    try:
        files = fs.find(base)
    except FileNotFoundError:
        return {}
    return {f[len(base) + 1: -len(".json")]: json.loads(fs.cat_file(f))
            for f in files if f.endswith(".json") and ".tmp-" not in f}


def write_record(output: str, unit: Unit, rows: list[dict]) -> None:
    write_atomic(output, f"{ROOT}/records/{unit.key}.json", json.dumps(rows).encode())


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
            value = (lambda r: float(r["gain"] > 0)) if name == "success" else (lambda r, n=name: r[n])
            per_image = [np.mean([value(r) for r in group if r["image"] == i]) for i in images]
            est = bootstrap_ci(per_image, n_boot=n_boot, seed=seed)
            row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        for name in ("edit_norm", "edit_seconds", "seconds"):
            row[name] = float(np.mean([r[name] for r in group]))
        out.append(row)
    return out


def _write_parquet(output: str, name: str, table: list[dict]) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(table), sink)
    write_atomic(output, f"{ROOT}/{name}.parquet", sink.getvalue().to_pybytes())


def write_tables(output: str, rows: list[dict]) -> None:
    """`interventions/metrics.parquet` (one row per edit) and `interventions/summary.parquet` (per task, method)."""
    rows = sorted(rows, key=lambda r: (r["task"], r["method"], r["image"], r["target_index"]))
    _write_parquet(output, "metrics", rows)
    _write_parquet(output, "summary", summarise(rows))


def write_calibration(output: str, table: list[dict], chosen: dict[str, float]) -> None:
    """`interventions/calibration.parquet` (per task, method and candidate strength, on training images, with the
    chosen row flagged) and `interventions/calibration.json` ({"task/method": strength}, read by the animation)."""
    _write_parquet(output, CALIBRATION, [{**r, "chosen": chosen.get(f"{r['task']}/{r['method']}") == r["strength"]}
                                         for r in table])
    write_atomic(output, f"{ROOT}/{CALIBRATION}.json", json.dumps(chosen, indent=1).encode())


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


def run_interventions(
    output: str,
    cfg: InterventionConfig | None = None,
    *,
    use_ray: bool = False,
    address: str | None = None,
    device: str = "auto",
    labeler_specs: Mapping[str, dict] | None = None,
    model=None,
    labelers: Mapping[str, Callable] | None = None,
    fresh: bool = False,
    stream=None,
) -> InterventionResult:
    """The interventions stage on a generated, labelled and probed run; resumable (finished units are skipped).

    `model`/`labelers` (this process only) replace loading them from the run's config and label attributes."""
    stream = stream or sys.stderr
    cfg = cfg or InterventionConfig()
    inputs = gather_inputs(output, cfg)
    prepare_store(output, cfg, inputs, fresh=fresh)
    done = finished_units(output)
    failed: dict[str, str] = {}
    counts = {"done": 0, "skipped": 0}
    worker: list[Worker] = []  # the local worker, made on first use

    def execute(units: list[Unit], what: str) -> None:
        todo = [u for u in units if u.key not in done]
        counts["skipped"] += len(units) - len(todo)
        print(f"interventions on {output}: {what}, {len(units)} units ({len(units) - len(todo)} done earlier, "
              f"{len(todo)} to run)", file=stream, flush=True)

        def on_done(unit: Unit, rows: list[dict]) -> None:
            write_record(output, unit, rows)
            done[unit.key] = rows
            counts["done"] += 1

        def on_failed(unit: Unit, error: str) -> None:
            failed[unit.key] = error
            print(f"intervention {unit.key} failed: {error}", file=stream, flush=True)

        if todo and use_ray:
            from workflows.ray_interventions import run_pool

            run_pool(output, cfg, todo, on_done, on_failed, labeler_specs=labeler_specs, labelers=labelers,
                     address=address)
        elif todo:
            if not worker:
                local = model
                if local is None:
                    from workflows.generate import load

                    local = load(load_run_config(output), device=device)
                found = labelers or load_labelers(output, cfg.tasks, labeler_specs, device=str(local.device))
                worker.append(Worker(local, inputs.probes, dict(found), inputs.scaler, cfg, inputs.hooks,
                                     store_sink(output)))
            for unit in todo:
                on_done(unit, run_unit(worker[0], unit))

    calibration = calibration_units(inputs, cfg)
    if calibration:
        execute(calibration, f"choosing strengths on {len(inputs.train)} training images")
        if failed:
            return InterventionResult(counts["done"], counts["skipped"], failed, [], cfg)
        table = summarise([r for u in calibration for r in done[u.key]])
        cfg = replace(cfg, chosen=choose_strengths(table))
        write_calibration(output, table, cfg.chosen)
        for r in table:
            mark = "  <- chosen" if cfg.chosen[f"{r['task']}/{r['method']}"] == r["strength"] else ""
            print(f"calibration {r['task']:8s} {r['method']:11s} x{r['strength']:<4g} gain {r['gain']:+.3f} on "
                  f"{r['n_images']} training images{mark}", file=stream, flush=True)
    execute(make_units(inputs, cfg), f"{len(inputs.test)} test images x {cfg.targets.count} targets")
    rows = [r for key, unit_rows in done.items() if not key.startswith(CALIBRATION + "/") for r in unit_rows]
    write_tables(output, rows)
    summary = summarise(rows) if rows else []
    for s in summary:
        print(f"{s['task']:8s} {s['method']:11s} x{s['strength'] or 1:<4g} {s['metric']} {s['score_before']:.3f} -> "
              f"{s['score_after']:.3f} (gain {s['gain']:+.3f} [{s['gain_lo']:+.3f}, {s['gain_hi']:+.3f}], "
              f"{s['n_edits']} edits)", file=stream, flush=True)
    return InterventionResult(counts["done"], counts["skipped"], failed, summary, cfg)
