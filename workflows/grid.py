"""The probe grid: one linear probe per (variant, hook point, step, target), fit on training images, scored on test.

Work is grouped by (variant, hook, step): a group reads one `(image, h, w, c)` slice of the store once and fits every
target on it (plus the shuffled-label control for the model itself). Each finished group leaves its probe weights
(`probes/weights/<variant>/<hook>/step<NN>.safetensors`) and then its metric rows (`probes/rows/...json`, written last:
the group's completion record); `probes/metrics.parquet` is assembled from the rows, so a killed grid resumes by
skipping groups that have rows. The Ray wrapper (`workflows.ray_grid`) only schedules `fit_group` calls.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from scipy.stats import rankdata

from ldm.errors import UserError
from probes.baselines import fit_control_probe, position_map, position_prediction, with_position
from probes.chunks import NonFiniteError, StandardisedBlocks
from probes.fit import fit_probe
from probes.linear import LinearProbe
from probes.metrics import (
    BlockTruth, DepthScaler, Scores, block_truth, bootstrap_many, depth_metrics, depth_truth_ranks, dice_iou,
    score_depth, score_saliency, upsampled_depth_metrics, upsampled_saliency_metrics,
)
from probes.resample import downsample_area
from workflows.labels import labelled_shards, read_labels
from workflows.store import (
    complete_images, load_layout, load_plan, load_run_config, open_store, read_file, take_images, write_atomic,
)

METRIC_NAMES = {  # probes.metrics keys -> metrics.parquet columns (docs/CONTRACTS.md)
    "dice_fg": "dice", "dice_bg": "dice_bg", "iou": "iou",
    "rmse": "rmse", "spearman": "spearman", "pearson": "pearson", "r2_beyond_position": "r2_pos",
}
_METRICS = [p + m + s for p in ("", "layer_") for m in METRIC_NAMES.values() for s in ("", "_lo", "_hi")]
SCHEMA = pa.schema(
    [("variant", pa.string()), ("hook", pa.string()), ("step", pa.int32()), ("target", pa.string()),
     ("mode", pa.string()), ("n_train", pa.int32()), ("n_test", pa.int32())]
    + [(m, pa.float64()) for m in _METRICS]
    + [("train_score", pa.float64()), ("alpha", pa.float64()), ("fit_seconds", pa.float64()), ("error", pa.string())]
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


@dataclass
class GridData:
    """Labels prepared once for the whole grid: saliency masks in {0, 1}, depth standardised with the training split.

    train/test: image indices `(image,)`; labels[target] = (train `(image, H, W)`, test `(image, H, W)`).
    """

    train: np.ndarray
    test: np.ndarray
    labels: dict[str, tuple[np.ndarray, np.ndarray]]
    mean_maps: dict[str, np.ndarray]
    depth_scaler: DepthScaler | None
    mode: str = "ours"
    seed: int = 0
    n_boot: int = 1000
    _memo: dict[tuple, np.ndarray | dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def _once(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def depth_ranks(self, h: int, w: int) -> dict[str, np.ndarray]:
        """Test depth's ranks for Spearman at a layer shape (`metrics.depth_truth_ranks`), computed once per shape."""
        return self._once(("ranks", h, w), lambda: depth_truth_ranks(self.labels["depth"][1], h, w))

    def area_labels(self, target: str, h: int, w: int, split: int = 0) -> np.ndarray:
        """Training (split 0) or test (1) labels area-averaged to a layer's (h, w), once per shape."""
        return self._once(("area", target, split, h, w), lambda: downsample_area(self.labels[target][split], h, w))

    def block_truth(self, target: str, h: int, w: int, split: int) -> BlockTruth:
        """The labels' block sums for image-resolution scores of (h, w) predictions (`metrics.block_truth`)."""
        mean_map = self.mean_maps["depth"] if target == "depth" else None
        return self._once(("blocks", target, split, h, w),
                          lambda: block_truth(self.labels[target][split], h, w, mean_map))

    def mean_map_at(self, target: str, h: int, w: int) -> np.ndarray:
        """The training mean label map area-averaged to (h, w)."""
        return self._once(("map", target, h, w), lambda: downsample_area(self.mean_maps[target][None], h, w)[0])

    def fit_labels(self, target: str, h: int, w: int) -> np.ndarray:
        """Training labels as a probe fit takes them: at the layer's (h, w) for our probes (which fit at layer
        resolution); at image resolution for the paper's trainer, which upsamples."""
        return self.area_labels(target, h, w) if self.mode == "ours" else self.labels[target][0]


class GroupActs:
    """One group's training and test activations `(image, h, w, c)`, and what the probes fit on them share, built
    on first use: the standardised blocks of our probes (four fits read the same activations, two more the
    position-augmented ones) and the activations with the mean depth map appended (`baselines.with_position`)."""

    def __init__(self, train: np.ndarray, test: np.ndarray, data: GridData):
        self.train, self.test, self.data = train, test, data
        self._blocks: dict[bool, StandardisedBlocks] = {}
        self._positioned: tuple[np.ndarray, np.ndarray] | None = None

    def positioned(self) -> tuple[np.ndarray, np.ndarray]:
        if self._positioned is None:
            m = self.data.mean_maps["depth"]
            self._positioned = (with_position(self.train, m), with_position(self.test, m))
        return self._positioned

    def fit_kwargs(self, positioned: bool = False) -> dict[str, Any]:
        """Keyword arguments for `fit_probe` on the training activations (or their positioned version)."""
        if self.data.mode != "ours":
            return {}
        if positioned not in self._blocks:
            acts = self.positioned()[0] if positioned else self.train
            self._blocks[positioned] = StandardisedBlocks.with_stats(acts)
        return {"blocks": self._blocks[positioned]}


def variant_output(output: str, variant: str) -> str:
    """Where a variant's activations live: the run itself, or a whole run store under variants/."""
    return output if variant == "ldm" else posixpath.join(output, "variants", variant)


def usable_images(output: str, targets: tuple[str, ...], variants: tuple[str, ...]) -> np.ndarray:
    """Boolean `(image,)`: generated in every variant and labelled for every target."""
    ok = complete_images(output)
    for variant in variants:
        if variant != "ldm":
            ok &= complete_images(variant_output(output, variant))
    shard_of = np.arange(len(ok)) // load_run_config(output).shard_size
    for target in targets:
        ok &= np.isin(shard_of, sorted(labelled_shards(output, target)))
    return ok


def prepare_grid_data(output: str, targets: tuple[str, ...] = ("saliency", "depth"),
                      variants: tuple[str, ...] = ("ldm",), mode: str = "ours", seed: int = 0,
                      n_boot: int = 1000) -> GridData:
    """Split usable images by the manifest's split and load their labels. Test images never shape a fit."""
    ok = usable_images(output, targets, variants)
    split = np.asarray(load_plan(output).splits)
    train, test = np.flatnonzero(ok & (split == "train")), np.flatnonzero(ok & (split == "test"))
    if len(train) < 2 or len(test) < 1:
        raise UserError(
            f"the probe grid needs >= 2 training and >= 1 test images with activations and labels; have "
            f"{len(train)} train, {len(test)} test. Run the generate and label stages first"
        )
    labels, maps, scaler = {}, {}, None
    for target in targets:
        tr, te = read_labels(output, target, train), read_labels(output, target, test)
        if target == "saliency":  # any confident foreground pixel counts, as the paper binarises TRACER's map
            tr, te = (tr > 0.5).astype(np.float32), (te > 0.5).astype(np.float32)
        else:
            scaler = DepthScaler.fit(tr)
            tr, te = scaler.transform(tr), scaler.transform(te)
        labels[target] = (tr, te)
        maps[target] = position_map(tr)
    return GridData(train, test, labels, maps, scaler, mode, seed, n_boot)


def _metric_columns(scores: Scores) -> dict[str, float]:
    row = {}
    for key, est in scores.estimates.items():
        resolution, metric = key.split("/")
        name = ("" if resolution == "image" else "layer_") + METRIC_NAMES[metric]
        row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
    return row


TRAIN_SCORE = {"saliency": "image/dice_fg", "depth": "image/r2_beyond_position"}  # the metric `train_score` holds
METRIC_KEYS = {"saliency": ("dice_fg", "dice_bg", "iou"),
               "depth": ("rmse", "pearson", "spearman", "r2_beyond_position")}


def score_prediction(target: str, pred: np.ndarray, data: GridData, positioned: np.ndarray | None = None,
                     split: int = 1) -> Scores:
    """Score predictions `(image, h, w)` for `target` (probability for saliency, standardised depth) on the test
    (`split=1`) or training (`split=0`: image resolution, no bootstrap, no Spearman: only `TRAIN_SCORE` is kept)
    images; `positioned`: the depth probe's with the mean map as an extra channel, for R2 beyond position.

    When the image size is a multiple of the layer's and the predictions are finite, image-resolution metrics come
    from the labels' block sums (`metrics.upsampled_*_metrics`, equal to scoring the upsampled arrays); otherwise
    `metrics.score_saliency` / `score_depth` upsample, and flag or raise on non-finite predictions."""
    truth = data.labels[target][split]
    h, w = pred.shape[1:]
    finite = np.isfinite(pred).all() and (positioned is None or np.isfinite(positioned).all())
    if truth.shape[1] % h or truth.shape[2] % w or not finite:
        kw = {"n_boot": data.n_boot, "seed": data.seed} if split else {"n_boot": 1, "resolutions": ("image",)}
        if target == "saliency":
            return score_saliency(pred, truth, **kw)
        ranks = data.depth_ranks(h, w) if split else None
        return score_depth(pred, truth, data.mean_maps["depth"], positioned=positioned, ranks=bool(split),
                           truth_ranks=ranks, **kw)
    blocks = data.block_truth(target, h, w, split)
    layer_truth = data.area_labels(target, h, w, split)
    if target == "saliency":
        image = upsampled_saliency_metrics(pred, blocks)
        layer = dice_iou(pred > 0.5, layer_truth > 0.5) if split else {}
        flags = {"n_nonfinite": 0, "n_empty_mask": int((blocks.totals["t"] == 0).sum())}
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


def fit_and_score(acts: GroupActs, target: str, data: GridData,
                  shuffled: bool = False) -> tuple[dict, LinearProbe | None]:
    """Fit one probe on a group's training activations and score it on its test activations.

    Depth also gets a second probe that sees the training mean depth map as one more input channel and predicts the
    depth's deviation from that map (so regularisation shrinks towards the map, not towards zero); the map plus its
    prediction scores R2 beyond position. A probe of depth alone must rediscover position from the activations and any
    miss counts against it although the map is free, so only the positioned probe measures what the activations add.
    `train_score`: the headline metric (`TRAIN_SCORE`) on the training images, so layers can be chosen without the test
    split. Returns the metric columns (with `error` set instead when the probe cannot be fit or scored) and the probe.
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
        probe = fit(acts.train, labels)
        positioned = [None, None]  # (train, test) predictions of the depth probe that also sees the mean map
        if target == "depth":
            m = data.mean_maps["depth"]
            m_layer = data.mean_map_at("depth", h, w)
            aug_train, aug_test = acts.positioned()
            # the map is the starting point: only the deviation is penalised (labels at layer or image resolution)
            pos_probe = fit(aug_train, labels - (m_layer if labels.shape[1:] == (h, w) else m), positioned=True)
            positioned = [m_layer + pos_probe.predict(aug_train), m_layer + pos_probe.predict(aug_test)]
        row = _metric_columns(score_prediction(target, probe.predict(acts.test), data, positioned[1]))
        train = score_prediction(target, probe.predict(acts.train), data, positioned[0], split=0)
    except NonFiniteError as err:
        return {"error": f"non-finite values: {err}", "fit_seconds": time.perf_counter() - start}, None
    row.update(train_score=train.estimates[TRAIN_SCORE[target]].mean, alpha=probe.alpha,
               fit_seconds=time.perf_counter() - start, error=None)
    return row, probe


def read_activations(output: str, group: ProbeGroup, images: np.ndarray) -> np.ndarray:
    """`(image, h, w, c)` activations of one (hook, step) for the given images: reads only that step's chunks."""
    root = open_store(variant_output(output, group.variant))
    name = f"acts/{group.hook}/act"
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
            metrics, probe = fit_and_score(acts, target, data, shuffled)
            rows.append(dict(variant=variant, hook=group.hook, step=group.step, target=target, mode=data.mode,
                             n_train=len(data.train), n_test=len(data.test), **metrics))
            if probe is not None:
                weights.update({f"{variant}/{target}/{k}": v for k, v in probe.to_dict().items()})
    write_atomic(output, f"probes/weights/{group.path}.safetensors", save_safetensors(weights))
    write_atomic(output, f"probes/rows/{group.path}.json", json.dumps(rows, default=float).encode())
    return rows


def position_rows(data: GridData) -> list[dict]:
    """The position-only baseline per target: the training split's mean label map as every test image's prediction."""
    rows = []
    for target, (_, test) in data.labels.items():
        h, w = test.shape[1:]
        pred = position_prediction(data.mean_maps[target], len(test), h, w)
        if target == "saliency":
            pred = np.ascontiguousarray(pred)
        rows.append(dict(variant="position", hook="-", step=-1, target=target, mode="-", n_train=len(data.train),
                         n_test=len(data.test), train_score=np.nan, alpha=np.nan, fit_seconds=0.0, error=None,
                         **_metric_columns(score_prediction(target, pred, data))))
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
    fs, root = fsspec.core.url_to_fs(output)
    base = posixpath.join(root, "probes", "rows")
    try:
        files = fs.find(base)
    except FileNotFoundError:
        return {}
    out = {}
    for file in files:
        if file.endswith(".json") and ".tmp-" not in file:
            out[posixpath.relpath(file, base)[: -len(".json")]] = json.loads(fs.cat_file(file))
    return out


def write_metrics(output: str, rows: list[dict]) -> pa.Table:
    """Write `probes/metrics.parquet` (atomically) from all rows; columns per docs/CONTRACTS.md."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(output, "probes/metrics.parquet", sink.getvalue().to_pybytes())
    return table


def read_metrics(output: str):
    """`probes/metrics.parquet` as a pandas-free pyarrow Table."""
    data = read_file(output, "probes/metrics.parquet")
    if data is None:
        raise UserError(f"no probe metrics in {output}; run the probe stage first (`sceneprobe probe CONFIG`)")
    return pq.read_table(pa.BufferReader(data))


def load_probe(output: str, variant: str, target: str, hook: str, step: int) -> LinearProbe:
    """A fitted probe from the grid's weights."""
    group = ProbeGroup("ldm" if variant == "shuffled" else variant, hook, step)
    data = read_file(output, f"probes/weights/{group.path}.safetensors")
    if data is None:
        raise UserError(f"no fitted probe for {variant} {hook} step {step}; run the probe stage for it first")
    tensors = load_safetensors(data)
    prefix = f"{variant}/{target}/"
    fields = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not fields:
        raise UserError(f"the probe for {target} at {variant} {hook} step {step} could not be fit (see metrics error)")
    return LinearProbe.from_dict(fields)


def run_grid(output: str, groups: list[ProbeGroup], data: GridData,
             fit_many: Callable[[list[ProbeGroup]], Iterable[tuple[ProbeGroup, list[dict]]]] | None = None,
             progress: Callable[[int], None] | None = None) -> pa.Table:
    """Fit the groups not yet finished, then assemble metrics.parquet from every group's rows.

    fit_many(todo) yields (group, rows) as groups finish, in any order; default: one after another in this process
    (`workflows.ray_grid` passes one that fans out to Ray tasks).
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
