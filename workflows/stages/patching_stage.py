"""The patching map as a stage: pairs of training images (`workflows.stages.patching`), their records, and the map
`interventions/patching.parquet` of causal effect per (view, layer, step) with 95% intervals over pairs.

Training images only: the map may choose the layers and steps of the test edits (`hooks: causal`,
`workflows.stages.causal`), so no test image takes part in it. Plain functions; the executor of the pairs is passed in
(`workflows.ray.patching.pair_runner` gives the actor pool's).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ldm.errors import UserError
from probes.metrics import bootstrap_many
from workflows.config import EXTRAS, InterventionConfig, PatchingConfig
from workflows.stages.edit_units import colour_check_for, load_labelers, read_unedited
from workflows.stages.grid_data import prepare_grid_data
from workflows.stages.interventions import SUMMARY_FIELDS, judge
from workflows.stages.patching import Pair, PatchWorker, run_pair
from workflows.stages.shard import load
from workflows.store import Records, load_layout, load_plan, load_run_config, read_file, write_atomic, write_table
from workflows.store.paths import PATCHING_CELLS, PATCHING_CONFIG, PATCHING_MAP, PATCHING_RECORDS

# run_pairs(pairs, on_done(pair, record), on_failed(pair, error)): executes pairs, reporting each as it finishes
PairRunner = Callable[[list[Pair], Callable[[Pair, dict], None], Callable[[Pair, str], None]], None]
MIN_PAIRS = 2  # an interval over pairs needs at least two


def pair_records(output: str) -> Records:
    """One record per finished pair: what was chosen and its rows."""
    return Records(output, PATCHING_RECORDS)


@dataclass
class PatchInputs:
    pairs: list[Pair]
    layers: list[str]  # in forward order
    steps: list[int]


def map_layers(output: str, pcfg: PatchingConfig) -> tuple[list[str], list[int]]:
    """The map's layers (forward order) and steps, checked against the run."""
    layout, run_cfg = load_layout(output), load_run_config(output)
    unet = [h for h in layout.acts if h not in EXTRAS]
    layers = unet if pcfg.layers in (None, "all") else list(pcfg.layers)
    unknown = [h for h in layers if h not in unet]
    if unknown:
        raise UserError(f"interventions.patching.layers: unknown hook(s) {', '.join(unknown)}; the run's U-Net hooks: "
                        f"{', '.join(unet)}")
    bad = [s for s in pcfg.steps if s >= run_cfg.steps]
    if bad:
        raise UserError(f"interventions.patching.steps: {bad} past the run's last step {run_cfg.steps - 1}")
    return [h for h in unet if h in layers], sorted(set(pcfg.steps))


def gather_pairs(output: str, cfg: InterventionConfig) -> PatchInputs:
    """The first `pairs` training images with a salient object (a non-empty stored mask), as pair units."""
    pcfg = cfg.patching
    layers, steps = map_layers(output, pcfg)
    data = prepare_grid_data(output, targets=("saliency",))
    masks = data.labels["saliency"][0]  # (train image, H, W)
    with_object = [k for k in range(len(data.train)) if (masks[k] > 0.5).any()][: pcfg.pairs]
    if len(with_object) < MIN_PAIRS:
        raise UserError(f"patching needs at least {MIN_PAIRS} training images with a salient object, found "
                        f"{len(with_object)} of {len(data.train)} training images: generate more training images "
                        "(num_images, test_fraction)")
    plan = load_plan(output)
    ids = data.train[with_object]
    unedited = read_unedited(output, ids)
    pairs = [Pair(int(i), plan.prompts[i], int(plan.seeds[i]), masks[k], unedited[n])
             for n, (i, k) in enumerate(zip(ids, with_object))]
    return PatchInputs(pairs, layers, steps)


def prepare(output: str, pcfg: PatchingConfig, fresh: bool) -> None:
    """Check (or record) the map's settings; a resumed run must match them, `fresh` starts over."""
    stored, current = read_file(output, PATCHING_CONFIG), pcfg.data_fields()
    if stored is not None and not fresh:
        diff = [k for k in current if json.loads(stored).get(k) != current[k]]
        if diff:
            raise UserError(f"{output}/interventions/patching holds a map made with other settings ({', '.join(diff)});"
                            " run it with the stored settings, or start it over with `sceneprobe patch CONFIG --fresh`")
    if stored is None or fresh:
        pair_records(output).clear()
        write_atomic(output, PATCHING_CONFIG, json.dumps(current, indent=1).encode())


def summarise_map(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (view, hook, step), in the order the rows first name them: each judged field's mean over pairs with
    a 95% bootstrap interval (`gain` is paired: each pair's Dice to the counterfactual's mask, patched minus
    unpatched), plus `n_pairs` and the mean `seconds` per patched image."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["view"], r["hook"], r["step"]), []).append(r)
    out = []
    for (view, hook, step), group in cells.items():
        row = {"view": view, "hook": hook, "step": step, "n_pairs": len(group)}
        estimates = bootstrap_many({name: [r.get(name, np.nan) for r in group] for name in SUMMARY_FIELDS},
                                   n_boot=n_boot, seed=seed)  # NaNs (e.g. no object left to compare) left out
        for name, est in estimates.items():
            row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
        row["seconds"] = float(np.mean([r["seconds"] for r in group]))
        out.append(row)
    return out


@dataclass
class PatchingResult:
    done: int  # pairs finished in this session
    skipped: int  # pairs finished earlier (resume)
    failed: dict[str, str]  # pair key -> error
    usable: int  # pairs with a counterfactual far enough from the base
    table: list[dict]  # the map (summarise_map)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_patching(output: str, cfg: InterventionConfig, *, run_pairs: PairRunner | None = None, fresh: bool = False,
                 stream=None, **local) -> PatchingResult:
    """The patching map on a generated and labelled run's training images; resumable (finished pairs are skipped).

    1. gather the pairs' training images, check (or record) the settings;
    2. run the pairs without a record (`run_pairs`, default `local_runner(output, cfg, inputs, **local)`);
    3. judge every patched image (moved and intact, the edit stage's thresholds) and write the map with intervals
       (`patching.parquet`) and every patched image's row (`patching_cells.parquet`)."""
    stream = stream or sys.stderr
    if cfg.patching is None:
        raise UserError("patching is off: set interventions.patching (e.g. --set interventions.patching.pairs=8)")
    inputs = gather_pairs(output, cfg)  # 1.
    prepare(output, cfg.patching, fresh)
    records = pair_records(output)
    done = records.done()
    todo = [p for p in inputs.pairs if p.key not in done]
    failed: dict[str, str] = {}
    print(f"patching on {output}: {len(inputs.pairs)} training pairs x {len(inputs.layers)} layers x "
          f"{len(inputs.steps)} steps x {len(cfg.patching.views)} views ({len(inputs.pairs) - len(todo)} pairs done "
          f"earlier, {len(todo)} to run)", file=stream, flush=True)

    def on_done(pair: Pair, record: dict) -> None:
        records.write(pair.key, record)
        done[pair.key] = record
        info = record["pair"]
        dice = "no salient object in any candidate" if info["overlap"] is None else f"mask Dice {info['overlap']:.2f}"
        print(f"patching pair {pair.key}: counterfactual seed {info['counterfactual_seed']}, {dice}"
              f"{'' if info['usable'] else ' (not usable)'}", file=stream, flush=True)

    def on_failed(pair: Pair, error: str) -> None:
        failed[pair.key] = error
        print(f"patching pair {pair.key} failed: {error}", file=stream, flush=True)

    if todo:  # 2.
        (run_pairs or local_runner(output, cfg, inputs, **local))(todo, on_done, on_failed)
    for pair in todo:  # a runner may return with pairs never attempted (e.g. every actor lost): undone, not mapped
        if pair.key not in done and pair.key not in failed:
            failed[pair.key] = "not run"
    if failed:
        return PatchingResult(len(todo) - len(failed), len(inputs.pairs) - len(todo), failed, 0, [])
    mine = [done[p.key] for p in inputs.pairs]
    usable = sum(r["pair"]["usable"] for r in mine)
    if usable < MIN_PAIRS:
        raise UserError(f"only {usable} of {len(mine)} training pairs are usable (a counterfactual seed whose salient "
                        f"mask overlaps the image's by Dice <= {cfg.patching.max_overlap:g}); need {MIN_PAIRS}: raise "
                        "interventions.patching.candidates, pairs or max_overlap and rerun with --fresh")
    rows = [judge(r, cfg) for record in mine for r in record["rows"]]  # 3.
    table = summarise_map(rows)
    write_table(output, PATCHING_CELLS, rows)
    write_table(output, PATCHING_MAP, table)
    print_map(table, stream)
    return PatchingResult(len(todo), len(inputs.pairs) - len(todo), {}, usable, table)


def print_map(table: list[dict], stream, top: int = 5) -> None:
    """The `top` cells of each view by movement, with their intervals and success."""
    for view in dict.fromkeys(r["view"] for r in table):
        best = sorted((r for r in table if r["view"] == view), key=lambda r: -r["gain"])[:top]
        for r in best:
            print(f"patching {view:6s} {r['hook']:9s} step {r['step']:2d}: Dice to the counterfactual's mask "
                  f"{r['score_before']:.3f} -> {r['score_after']:.3f} (gain {r['gain']:+.3f} [{r['gain_lo']:+.3f}, "
                  f"{r['gain_hi']:+.3f}]), intact {r['intact']:.2f}, success {r['success']:.2f} over {r['n_pairs']} "
                  "pairs", file=stream, flush=True)


def local_runner(output: str, cfg: InterventionConfig, inputs: PatchInputs, *, model=None,
                 labelers: Mapping[str, Callable] | None = None, labeler_specs: Mapping[str, dict] | None = None,
                 device: str = "auto") -> PairRunner:
    """Run pairs one after another in this process; the model and the saliency labeler are loaded on first use."""
    worker: list[PatchWorker] = []

    def run(pairs: list[Pair], on_done, on_failed) -> None:
        if not worker:
            worker.append(make_worker(output, cfg, inputs, model=model, labelers=labelers,
                                      labeler_specs=labeler_specs, device=device))
        for pair in pairs:
            on_done(pair, run_pair(worker[0], pair))

    return run


def make_worker(output: str, cfg: InterventionConfig, inputs: PatchInputs, *, model=None,
                labelers: Mapping[str, Callable] | None = None, labeler_specs: Mapping[str, dict] | None = None,
                device: str = "auto") -> PatchWorker:
    """The run's model and saliency labeler (checked by version, `edit_units.load_labelers`) as a `PatchWorker`."""
    loaded = model if model is not None else load(load_run_config(output), device=device)
    found = labelers or load_labelers(output, ("saliency",), labeler_specs, device=str(loaded.device))
    return PatchWorker(loaded, found["saliency"], cfg, inputs.layers, inputs.steps, colour_check_for(loaded))
