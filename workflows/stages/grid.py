"""The probe grid: one linear probe per (variant, hook point, step, target), fit on training images, scored on test.

Work is grouped by (variant, hook, step): a group reads one `(image, h, w, c)` slice of the store once and fits every
target on it (plus the shuffled-label control for the model itself). Each finished group leaves its probe weights
(`probes/weights/<variant>/<hook>/step<NN>.safetensors`) and then its metric rows (`probes/rows/...json`, written last:
the group's completion record); `probes/metrics.parquet` is assembled from the rows, so a killed grid resumes by
skipping groups that have rows. The Ray wrapper (`workflows.ray.tasks`) only schedules `fit_group` calls.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import pyarrow as pa
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from scipy.stats import rankdata

from ldm.errors import UserError
from probes.baselines import fit_control_probe, position_prediction
from probes.chunks import NonFiniteError
from probes.fit import fit_probe
from probes.linear import LinearProbe
from probes.blocks import choose_threshold, upsampled_depth_metrics, upsampled_saliency_metrics
from probes.metrics import (
    Scores, bootstrap_many, depth_metrics, is_constant, saliency_metrics, score_depth, score_saliency,
)
from probes.resample import upsample_nearest
from workflows.config import RunConfig
from workflows.stages.generate import control_configs
from workflows.stages.grid_data import GridData, GroupActs, prepare_grid_data
from workflows.stages.progress import Progress
from workflows.store import (Records, load_layout, open_store, read_file, read_table, require_run, take_images,
                             write_atomic, write_table)
from workflows.store.paths import PROBE_METRICS, PROBE_ROWS, activations, probe_weights, variant_output

METRIC_NAMES = {  # probes.metrics keys -> metrics.parquet columns (docs/CONTRACTS.md)
    "dice_fg": "dice", "dice_bg": "dice_bg", "iou": "iou", "auroc": "auroc", "ap": "ap", "dice_tuned": "dice_tuned",
    "rmse": "rmse", "spearman": "spearman", "pearson": "pearson", "r2_beyond_position": "r2_pos",
}
_METRICS = [p + m + s for p in ("", "layer_") for m in METRIC_NAMES.values() for s in ("", "_lo", "_hi")]
SCHEMA = pa.schema(
    [("variant", pa.string()), ("hook", pa.string()), ("step", pa.int32()), ("target", pa.string()),
     ("mode", pa.string()), ("n_train", pa.int32()), ("n_test", pa.int32())]
    + [(m, pa.float64()) for m in _METRICS]
    + [("train_score", pa.float64()), ("threshold", pa.float64()), ("alpha", pa.float64()),
       ("alpha_at_edge", pa.bool_()), ("alpha_positioned", pa.float64()), ("alpha_positioned_at_edge", pa.bool_()),
       ("constant_prediction", pa.bool_()), ("fit_seconds", pa.float64()), ("error", pa.string()),
       ("per_image", pa.list_(pa.float64()))]  # the headline metric per test image (paired margins, findings)
)
POSITIONED = "depth_positioned"  # the weights' key of the depth probe that also sees the mean map (behind r2_pos)


@dataclass(frozen=True)
class ProbeGroup:
    """The probes fit on one activation slice: `hook` at `step` of `variant`'s store."""

    variant: str
    hook: str
    step: int

    @property
    def path(self) -> str:
        return f"{self.variant}/{self.hook}/step{self.step:02d}"


def _metric_columns(scores: Scores, target: str) -> dict[str, float | list[float]]:
    """Every estimate as `name, name_lo, name_hi`, and `per_image`: the headline metric (`TRAIN_SCORE[target]`) of
    each test image, in the grid's test order, so margins between probes are paired over the same images."""
    row: dict = {"per_image": [float(v) for v in scores.per_image[TRAIN_SCORE[target]]]}
    for key, est in scores.estimates.items():
        resolution, metric = key.split("/")
        name = ("" if resolution == "image" else "layer_") + METRIC_NAMES[metric]
        row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
    return row


# the headline metric: what `train_score` holds on the training images and `per_image` on each test image
TRAIN_SCORE = {"saliency": "image/dice_fg", "depth": "image/r2_beyond_position"}
METRIC_KEYS = {"saliency": ("dice_fg", "dice_bg", "iou", "auroc", "ap", "dice_tuned"),
               "depth": ("rmse", "pearson", "spearman", "r2_beyond_position")}


def score_prediction(target: str, pred: np.ndarray, data: GridData, positioned: np.ndarray | None = None,
                     split: int = 1, threshold: float | None = None) -> Scores:
    """Score predictions `(image, h, w)` for `target` (probability for saliency, standardised depth) on the test
    (`split=1`) or training (`split=0`: image resolution, no bootstrap, no Spearman, AUROC or AP) images;
    `positioned`: the depth probe's with the mean map as an extra channel, for R2 beyond position; `threshold`: the
    saliency threshold chosen on the training images (`train_threshold`), for `dice_tuned`.

    When the image size is a multiple of the layer's and the predictions are finite, image-resolution metrics come
    from the labels' block sums (`blocks.upsampled_*_metrics`, equal to scoring the upsampled arrays); otherwise
    `metrics.score_saliency` / `score_depth` upsample, and flag or raise on non-finite predictions."""
    truth = data.labels[target][split]
    h, w = pred.shape[1:]
    finite = np.isfinite(pred).all() and (positioned is None or np.isfinite(positioned).all())
    if truth.shape[1] % h or truth.shape[2] % w or not finite:
        kw = {"n_boot": data.n_boot, "seed": data.seed} if split else {"n_boot": 1, "resolutions": ("image",)}
        if target == "saliency":
            return score_saliency(pred, truth, tuned_threshold=threshold, ranking=bool(split), **kw)
        ranks = data.depth_ranks(h, w) if split else None
        return score_depth(pred, truth, data.mean_maps["depth"], positioned=positioned, ranks=bool(split),
                           truth_ranks=ranks, **kw)
    blocks = data.block_truth(target, h, w, split)
    layer_truth = data.area_labels(target, h, w, split)
    if target == "saliency":
        image = upsampled_saliency_metrics(pred, blocks, tuned=threshold, ranking=bool(split))
        layer = saliency_metrics(pred, layer_truth, tuned=threshold) if split else {}
        fg = blocks.totals["t"]
        flags = {"n_nonfinite": 0, "n_empty_mask": int((fg == 0).sum()),
                 "n_degenerate_mask": int(((fg == 0) | (fg == blocks.pixels)).sum())}
    else:
        m_layer = data.mean_map_at("depth", h, w)
        p_ranks = rankdata(pred.reshape(len(pred), -1), axis=1) if split else None
        image = upsampled_depth_metrics(pred, blocks, None if positioned is None else positioned - m_layer, p_ranks)
        layer = depth_metrics(pred, layer_truth, m_layer, positioned,
                              (p_ranks, data.depth_ranks(h, w)["layer"])) if split else {}
        flags = {"n_nonfinite": 0, "n_constant_depth": int(image["constant_truth"].sum())}
    per = {f"{res}/{k}": v for res, metrics in (("image", image), ("layer", layer))
           for k, v in metrics.items() if k in METRIC_KEYS[target]}
    n_boot = data.n_boot if split else 1
    return Scores(estimates=bootstrap_many(per, n_boot=n_boot, seed=data.seed), per_image=per, flags=flags)


def train_threshold(pred: np.ndarray, data: GridData) -> float:
    """The threshold of `dice_tuned`: the candidate (`metrics.THRESHOLDS`) with the best mean image-resolution Dice
    of a probe's *training* predictions `(image, h, w)` (`blocks.choose_threshold`); test images take no part."""
    H, W = data.labels["saliency"][0].shape[1:]
    h, w = pred.shape[1:]
    if H % h or W % w:  # block sums need an integer factor: upsample first (blocks of one pixel)
        pred, (h, w) = upsample_nearest(pred, H, W), (H, W)
    return choose_threshold(pred, data.block_truth("saliency", h, w, 0))


def constant_prediction(target: str, pred: np.ndarray, data: GridData, positioned: np.ndarray | None = None) -> bool:
    """Whether test predictions `(image, h, w)` behind a row's metrics carry nothing (`metrics.is_constant`):
    saliency, every pixel on the same side of 0.5 (the mask behind `dice` is all background or all foreground);
    depth, the prediction constant, or the deviation from the mean map of the prediction behind `r2_pos` (the
    positioned one, else `pred` itself) constant, as for the position-only baseline."""
    if target == "saliency":
        return is_constant(pred, threshold=0.5)
    m_layer = data.mean_map_at("depth", *pred.shape[1:])
    return is_constant(pred) or is_constant((pred if positioned is None else positioned) - m_layer)


def alpha_at_edge(probe: LinearProbe | None) -> bool | None:
    """Whether the probe's chosen alpha is the smallest or largest of its alpha grid (the search may have wanted to
    go further); None without a search (no probe, the paper's trainer, a single alpha)."""
    if probe is None or len(probe.alpha_grid) < 2:
        return None
    return bool(probe.alpha in (probe.alpha_grid.min(), probe.alpha_grid.max()))


def fit_and_score(acts: GroupActs, target: str, data: GridData,
                  shuffled: bool = False) -> tuple[dict, dict[str, LinearProbe]]:
    """Fit one probe on a group's training activations and score it on its test activations.

    Depth also gets a second probe that sees the training mean depth map as one more input channel and predicts the
    depth's deviation from that map (so regularisation shrinks towards the map, not towards zero); the map plus its
    prediction scores R2 beyond position. A probe of depth alone must rediscover position from the activations and any
    miss counts against it although the map is free, so only the positioned probe measures what the activations add.
    `train_score`: the headline metric (`TRAIN_SCORE`) on the training images, so layers can be chosen without the test
    split; saliency's `threshold` (for `dice_tuned`) is chosen on the same training predictions. Returns the metric
    columns (with `error` set instead when the probe cannot be fit or scored) and the probes by weights key: {target:
    probe}, plus {POSITIONED: the positioned probe} for depth.
    """
    start = time.perf_counter()
    h, w = acts.train.shape[1:3]
    labels = data.fit_labels(target, h, w)

    def fit(x: np.ndarray, y: np.ndarray, positioned: bool = False) -> LinearProbe:
        kw = acts.fit_kwargs(positioned)
        if shuffled:
            return fit_control_probe(x, y, target, seed=data.seed, mode=data.mode, **kw)
        return fit_probe(x, y, target, mode=data.mode, seed=data.seed, **kw)

    try:
        probes, pos_probe = {target: fit(acts.train, labels)}, None
        positioned = [None, None]  # (train, test) predictions of the depth probe that also sees the mean map
        if target == "depth":
            m = data.mean_maps["depth"]
            m_layer = data.mean_map_at("depth", h, w)
            aug_train, aug_test = acts.positioned()
            # the map is the starting point: only the deviation is penalised (labels at layer or image resolution)
            pos_probe = probes[POSITIONED] = fit(aug_train, labels - (m_layer if labels.shape[1:] == (h, w) else m),
                                                 positioned=True)
            positioned = [m_layer + pos_probe.predict(aug_train), m_layer + pos_probe.predict(aug_test)]
        train_pred, test_pred = probes[target].predict(acts.train), probes[target].predict(acts.test)
        train = score_prediction(target, train_pred, data, positioned[0], split=0)  # raises on non-finite values
        threshold = train_threshold(train_pred, data) if target == "saliency" else None
        row = _metric_columns(score_prediction(target, test_pred, data, positioned[1], threshold=threshold), target)
    except NonFiniteError as err:
        return {"error": f"non-finite values: {err}", "fit_seconds": time.perf_counter() - start}, {}
    row.update(train_score=train.estimates[TRAIN_SCORE[target]].mean,
               threshold=np.nan if threshold is None else threshold, alpha=probes[target].alpha,
               alpha_at_edge=alpha_at_edge(probes[target]),
               alpha_positioned=np.nan if pos_probe is None else pos_probe.alpha,
               alpha_positioned_at_edge=alpha_at_edge(pos_probe),
               constant_prediction=constant_prediction(target, test_pred, data, positioned[1]),
               fit_seconds=time.perf_counter() - start, error=None)
    return row, probes


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
    return take_images(array, images, group.step)


def fit_group(output: str, group: ProbeGroup, data: GridData) -> list[dict]:
    """Fit and score every target on one activation slice; store weights, then the rows (the completion record)."""
    every = np.concatenate([data.train, data.test])
    every_acts = read_activations(output, group, every)
    acts = GroupActs(every_acts[: len(data.train)], every_acts[len(data.train):], data)
    rows, weights = [], {}
    jobs = [(group.variant, False)] + ([("shuffled", True)] if group.variant == "ldm" else [])
    for target in data.labels:
        for variant, shuffled in jobs:
            metrics, probes = fit_and_score(acts, target, data, shuffled)
            rows.append(dict(variant=variant, hook=group.hook, step=group.step, target=target, mode=data.mode,
                             n_train=len(data.train), n_test=len(data.test), **metrics))
            weights.update({f"{variant}/{name}/{k}": v for name, probe in probes.items()
                            for k, v in probe.to_dict().items()})
    write_atomic(output, probe_weights(group.path), save_safetensors(weights))
    Records(output, PROBE_ROWS).write(group.path, rows)
    return rows


def position_rows(data: GridData) -> list[dict]:
    """The position-only baseline per target: the training split's mean label map as every test image's prediction
    (its saliency `threshold` chosen on the same map as every training image's prediction)."""
    rows = []
    for target, (_, test) in data.labels.items():
        h, w = test.shape[1:]
        pred = np.ascontiguousarray(position_prediction(data.mean_maps[target], len(test), h, w))
        threshold = None
        if target == "saliency":
            threshold = train_threshold(np.ascontiguousarray(
                position_prediction(data.mean_maps[target], len(data.train), h, w)), data)
        rows.append(dict(variant="position", hook="-", step=-1, target=target, mode="-", n_train=len(data.train),
                         n_test=len(data.test), train_score=np.nan,
                         threshold=np.nan if threshold is None else threshold, alpha=np.nan, alpha_at_edge=None,
                         alpha_positioned=np.nan, alpha_positioned_at_edge=None,
                         constant_prediction=constant_prediction(target, pred, data), fit_seconds=0.0, error=None,
                         **_metric_columns(score_prediction(target, pred, data, threshold=threshold), target)))
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


def load_probe(output: str, variant: str, target: str, hook: str, step: int, positioned: bool = False) -> LinearProbe:
    """A fitted probe from the grid's weights. `positioned=True` (depth only): the probe behind `r2_pos`, fit on the
    activations with the training mean depth map `m` (`prepare_grid_data(output).mean_maps["depth"]`) appended as a
    channel, predicting the deviation from the map: its depth is `downsample_area(m, h, w) +
    probe.predict(baselines.with_position(acts, m))`."""
    if positioned and target != "depth":
        raise UserError(f"only depth has a positioned probe, not {target}")
    group = ProbeGroup("ldm" if variant == "shuffled" else variant, hook, step)
    data = read_file(output, probe_weights(group.path))
    if data is None:
        raise UserError(f"no fitted probe for {variant} {hook} step {step}; run the probe stage for it first")
    tensors = load_safetensors(data)
    prefix = f"{variant}/{POSITIONED if positioned else target}/"
    fields = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not fields:
        what = "positioned depth probe" if positioned else f"probe for {target}"
        raise UserError(f"the {what} at {variant} {hook} step {step} was not stored: it could not be fit (see the "
                        "metrics' error), or the grid predates it (refit the group)")
    return LinearProbe.from_dict(fields)


# fit_many(groups) yields (group, rows) as groups finish, in any order
FitMany = Callable[[list[ProbeGroup]], Iterable[tuple[ProbeGroup, list[dict]]]]


def run_grid(output: str, groups: list[ProbeGroup], data: GridData, fit_many: FitMany | None = None,
             progress: Callable[[int], None] | None = None) -> pa.Table:
    """Fit the groups not yet finished, then assemble metrics.parquet from every group's rows.

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
    rows = [row for group in groups for row in done[group.path]] + position_rows(data)
    return write_metrics(output, rows)


def probe_run(cfg: RunConfig, fitter: Callable[[GridData], FitMany] | None = None,
              stream: TextIO | None = None) -> pa.Table:
    """Fit and score the probe grid for the main model and its control variants; returns the metrics table.
    `fitter(data)` makes the executor of the groups (`workflows.ray.tasks.fit_groups_with_ray`); default: here."""
    require_run(cfg, "probe")
    stream = stream or sys.stderr
    p = cfg.probes
    variants = ("ldm",) + tuple(v for v in p.controls if v in control_configs(cfg))
    data = prepare_grid_data(cfg.output, tuple(p.targets), variants, p.mode, p.seed, p.bootstrap)
    groups = plan_groups(cfg.output, variants, p.hooks, p.steps)
    progress = Progress(total=len(groups), unit="probe groups", every=cfg.progress_every, stream=stream)
    table = run_grid(cfg.output, groups, data, fit_many=fitter(data) if fitter else None, progress=progress.update)
    progress.update(force=True)
    print(f"probes: {table.num_rows} probes scored on {len(data.test)} test images -> "
          f"{cfg.output}/{PROBE_METRICS}", file=stream, flush=True)
    return table
