"""The probe grid: one linear probe per (variant, hook point, step, target), fit on training images, scored on test.

Work is grouped by (variant, hook, step): a group reads one `(image, h, w, c)` slice of the store once and fits every
target on it (plus the shuffled-label control for the model itself). Each finished group leaves its probe weights
(`probes/weights/<variant>/<hook>/step<NN>.safetensors`) and then its metric rows (`probes/rows/...json`, written last:
the group's completion record); `probes/metrics.parquet` is assembled from the rows, so a killed grid resumes by
skipping groups that have rows. The Ray wrapper (`workflows.ray.tasks`) only schedules `fit_group` calls. One
probe's fit and scores: `grid_fit`, `grid_scores`; the feature controls (position, caption), fit beside the groups:
`grid_controls`; the labels and splits every fit shares: `grid_data`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import pyarrow as pa
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ldm.errors import UserError
from probes.linear import LinearProbe
from probes.vectors import VectorProbe
from workflows.config import VECTOR_TARGETS, RunConfig
from workflows.stages.generate import control_configs
from workflows.stages.grid_controls import control_rows
from workflows.stages.grid_data import GridData, GroupActs, prepare_grid_data
from workflows.stages.grid_fit import POSITIONED, fit_and_score
from workflows.stages.grid_scores import METRIC_NAMES, check_position_controls
from workflows.stages.grid_vectors import fit_and_score_vector
from workflows.stages.progress import Progress
from workflows.store import (Records, load_layout, open_store, read_acts, read_file, read_table, require_run,
                             write_atomic, write_table)
from workflows.store.paths import PROBE_METRICS, PROBE_ROWS, activations, probe_weights, variant_output

_METRICS = [p + m + s for p in ("", "layer_") for m in dict.fromkeys(METRIC_NAMES.values())  # (light shares a name)
            for s in ("", "_lo", "_hi")]
SCHEMA = pa.schema(
    [("variant", pa.string()), ("hook", pa.string()), ("step", pa.int32()), ("target", pa.string()),
     ("mode", pa.string()), ("n_train", pa.int32()), ("n_test", pa.int32())]
    + [(m, pa.float64()) for m in _METRICS]
    + [("train_score", pa.float64()), ("val_score", pa.float64()), ("threshold", pa.float64()),
       ("alpha", pa.float64()), ("alpha_at_edge", pa.bool_()), ("alpha_positioned", pa.float64()),
       ("alpha_positioned_at_edge", pa.bool_()), ("constant_prediction", pa.bool_()), ("fit_seconds", pa.float64()),
       ("error", pa.string()),
       # per test image, in the grid's test order: the headline and the beyond-position metric (paired margins)
       ("per_image", pa.list_(pa.float64())), ("per_image_beyond", pa.list_(pa.float64()))]
)


@dataclass(frozen=True)
class ProbeGroup:
    """The probes fit on one activation slice: `hook` at `step` of `variant`'s store."""

    variant: str
    hook: str
    step: int

    @property
    def path(self) -> str:
        return f"{self.variant}/{self.hook}/step{self.step:02d}"


def read_activations(output: str, group: ProbeGroup, images: np.ndarray) -> np.ndarray:
    """`(image, h, w, c)` activations of one (hook, step) for the given images: reads only that step's chunks."""
    root = open_store(variant_output(output, group.variant))
    name = activations(group.hook)
    if name not in root:
        have = sorted(k for k in root["acts"].group_keys()) if "acts" in root else []
        raise UserError(f"hook {group.hook!r} is not in the store of variant {group.variant!r}; stored: {', '.join(have)}")
    array = root[name]
    if not 0 <= group.step < array.shape[1]:
        raise UserError(f"step {group.step} is not in the store: steps 0..{array.shape[1] - 1} were recorded")
    return read_acts(root, group.hook, images, group.step)


def fit_group(output: str, group: ProbeGroup, data: GridData) -> list[dict]:
    """Fit and score every target on one activation slice; store weights, then the rows (the completion record)."""
    every = np.concatenate([data.train, data.test])
    every_acts = read_activations(output, group, every)
    acts = GroupActs(every_acts[: len(data.train)], every_acts[len(data.train):], data)
    rows, weights = [], {}
    jobs = [(group.variant, False)] + ([("shuffled", True)] if group.variant == "ldm" else [])
    for target in data.labels:
        for variant, shuffled in jobs:
            fit = fit_and_score_vector if target in VECTOR_TARGETS else fit_and_score
            metrics, probes = fit(acts, target, data, shuffled)
            rows.append(dict(variant=variant, hook=group.hook, step=group.step, target=target, mode=data.mode,
                             n_train=len(data.train), n_test=len(data.test), **metrics))
            weights.update({f"{variant}/{name}/{k}": v for name, probe in probes.items()
                            for k, v in probe.to_dict().items()})
    write_atomic(output, probe_weights(group.path), save_safetensors(weights))
    Records(output, PROBE_ROWS).write(group.path, rows)
    return rows


def plan_groups(output: str, variants: tuple[str, ...] = ("ldm",), hooks: list[str] | None = None,
                steps: list[int] | None = None) -> list[ProbeGroup]:
    """Every (variant, hook, step) group to fit; hooks/steps default to everything in the store."""
    layout = load_layout(output)
    names = list(layout.acts) if hooks is None else hooks
    unknown = [h for h in names if h not in layout.acts]
    if unknown:
        raise UserError(f"hook point(s) {', '.join(unknown)} not in the store; stored: {', '.join(layout.acts)}")
    all_steps = list(range(layout.steps)) if steps is None else steps
    bad = [s for s in all_steps if not 0 <= s < layout.steps]
    if bad:
        raise UserError(f"step(s) {bad} not in the store: steps 0..{layout.steps - 1} were recorded")
    return [ProbeGroup(v, h, s) for v in variants for h in names for s in all_steps]


def finished_groups(output: str) -> dict[str, list[dict]]:
    """{group path: rows} for groups whose rows record exists."""
    return Records(output, PROBE_ROWS).done()


def write_metrics(output: str, rows: list[dict]) -> pa.Table:
    """Write `probes/metrics.parquet` (atomically) from all rows; columns per docs/CONTRACTS.md."""
    return write_table(output, PROBE_METRICS, pa.Table.from_pylist(rows, schema=SCHEMA))


def read_metrics(output: str):
    """`probes/metrics.parquet` as a pandas-free pyarrow Table."""
    table = read_table(output, PROBE_METRICS)
    if table is None:
        raise UserError(f"no probe metrics in {output}; run the probe stage first (`sceneprobe probe CONFIG`)")
    return table


def load_probe(output: str, variant: str, target: str, hook: str, step: int,
               positioned: bool = False) -> LinearProbe | VectorProbe:
    """A fitted probe from the grid's weights. `positioned=True`: the probe given position for free: for depth the one
    behind `r2_pos`, fit on the activations with the training mean depth map `m`
    (`prepare_grid_data(output).mean_maps["depth"]`) appended as a channel, predicting the deviation from the map
    (its depth is `downsample_area(m, h, w) + probe.predict(baselines.with_position(acts, m))`); for saliency the one
    behind `dev_pos`, on `positional.with_position_features(acts)`. The feature controls (variant position or
    caption, hook "-", step -1) are in `grid_controls.CONTROL_WEIGHTS`. Normals and light: a `VectorProbe` on the
    features `GroupActs.positioned(target)` makes of the activations (`grid_vectors`); the position control fits
    none."""
    if variant in ("position", "caption"):
        path = probe_weights("controls")
    else:
        path = probe_weights(ProbeGroup("ldm" if variant == "shuffled" else variant, hook, step).path)
    data = read_file(output, path)
    if data is None:
        raise UserError(f"no fitted probe for {variant} {hook} step {step}; run the probe stage for it first")
    tensors = load_safetensors(data)
    vector = target in VECTOR_TARGETS
    prefix = f"{variant}/{POSITIONED[target] if positioned and not vector else target}/"
    fields = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not fields:
        what = f"positioned {target} probe" if positioned else f"probe for {target}"
        raise UserError(f"the {what} at {variant} {hook} step {step} was not stored: it could not be fit (see the "
                        "metrics' error), or the grid predates it (refit the group)")
    return VectorProbe.from_dict(fields) if vector else LinearProbe.from_dict(fields)


# fit_many(groups) yields (group, rows) as groups finish, in any order
FitMany = Callable[[list[ProbeGroup]], Iterable[tuple[ProbeGroup, list[dict]]]]


def run_grid(output: str, groups: list[ProbeGroup], data: GridData, fit_many: FitMany | None = None,
             progress: Callable[[int], None] | None = None, controls: list[dict] | None = None) -> pa.Table:
    """Fit the groups not yet finished, then assemble metrics.parquet from every group's rows and the feature
    controls' (`grid_controls.control_rows`; fit here when not given: the position control).

    fit_many(todo) yields (group, rows) as groups finish, in any order; default: one after another in this process
    (`workflows.ray.tasks` passes one that fans out to Ray tasks).
    """
    done = finished_groups(output)
    todo = [g for g in groups if g.path not in done]
    if progress and len(groups) > len(todo):
        progress(len(groups) - len(todo))
    fit_many = fit_many or (lambda gs: ((g, fit_group(output, g, data)) for g in gs))
    for group, rows in fit_many(todo):
        done[group.path] = rows
        if progress:
            progress(1)
    if controls is None:
        controls = control_rows(output, "", data, (), load_layout(output))
    rows = [row for group in groups for row in done[group.path]] + controls
    return write_metrics(output, rows)


def probe_run(cfg: RunConfig, fitter: Callable[[GridData], FitMany] | None = None,
              stream: TextIO | None = None) -> pa.Table:
    """Fit and score the probe grid for the main model and its control variants; returns the metrics table.
    `fitter(data)` makes the executor of the groups (`workflows.ray.tasks.fit_groups_with_ray`); default: here."""
    require_run(cfg, "probe")
    stream = stream or sys.stderr
    p = cfg.probes
    check_position_controls(p.targets)
    variants = ("ldm",) + tuple(v for v in p.controls if v in control_configs(cfg))
    data = prepare_grid_data(cfg.output, tuple(p.targets), variants, p.mode, p.seed, p.bootstrap)
    groups = plan_groups(cfg.output, variants, p.hooks, p.steps)
    # the feature controls first: they are quick, and a caption control's error (no text encoder) comes before hours
    controls = control_rows(cfg.output, cfg.model, data, tuple(p.controls), load_layout(cfg.output))
    progress = Progress(total=len(groups), unit="probe groups", every=cfg.progress_every, stream=stream)
    table = run_grid(cfg.output, groups, data, fit_many=fitter(data) if fitter else None, progress=progress.update,
                     controls=controls)
    progress.update(force=True)
    print(f"probes: {table.num_rows} probes scored on {len(data.test)} test images -> "
          f"{cfg.output}/{PROBE_METRICS}", file=stream, flush=True)
    return table
