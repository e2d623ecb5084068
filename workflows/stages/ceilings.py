"""Label ceilings: how good the pseudo-labels are. On the toy model every probe target's labeler is scored against
the renderer's exact truth on held-out renders, and the table is stored with the run (`label_ceilings.parquet`)
and drawn in the report beside the probe curves.

A probe is fit and scored against pseudo-labels, so its score says how well the activations predict the labeler,
not the scene; the labeler's own score against exact truth bounds what the labels can tell about the scene. Renders
of the held-out scenes `HELD_OUT_SEED + [0, n)` (never seen in the labelers' training, `ldm.toy.train_labelers`) at
the run's image size are labelled by the run's labelers and scored per image, with seeded 95% percentile-bootstrap
intervals over images (`probes.metrics.bootstrap_ci`):

* depth: RMSE and Spearman between the labeler's and the exact inverse depth, both standardised per image (the
  labelers' own metrics), and R2 beyond position (`r2_pos`, the grid's depth headline) against the mean standardised
  exact map of the training-scene renders `[0, n)`;
* saliency: Dice of the labeler's mask (probability > 0.5) with the exact salient-object mask (1 when both are
  empty), drawn beside the grid's `dice_tuned`;
* normals: mean angular error over surface pixels and the share within 11.25 / 22.5 / 30 degrees (`probes.angular`),
  and degrees gained over the position-only normal map of the training-scene renders (`angle_pos`, the grid's
  headline for normals);
* light: angular error, and degrees gained over the training renders' mean light direction (`angle_pos`).

Columns: target, metric, value, lo, hi, n_images (renders), n_undefined (images where the metric is undefined, e.g.
R2 of a flat depth map: left out of the mean), labeler, version, curve_metric (the probe-grid column the value is
drawn beside in the report; null for the others). Recomputed when the stored table is for other labelers or another
image count; a few seconds for 64 renders.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import numpy as np
import pyarrow as pa

from ldm.labelers import TOY_WORLD_MODELS, Labeler
from probes.angular import score_directions, score_normals
from probes.baselines_vectors import direction_position_prediction, mean_direction, mean_normal_map
from probes.metrics import bootstrap_ci, r2_beyond_position
from workflows.config import RunConfig
from workflows.store import load_layout, read_table, write_table
from workflows.store.paths import LABEL_CEILINGS

SCHEMA = pa.schema([("target", pa.string()), ("metric", pa.string()), ("value", pa.float64()), ("lo", pa.float64()),
                    ("hi", pa.float64()), ("n_images", pa.int32()), ("n_undefined", pa.int32()), ("labeler", pa.string()), ("version", pa.string()),
                    ("curve_metric", pa.string())])


def _standardised(x: np.ndarray) -> np.ndarray:
    """Per image zero mean and unit standard deviation over pixels: `(image, H, W)` -> `(image, H * W)` float64."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    return (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), 1e-12)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.maximum(np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1)), 1e-12)


def ceiling_values(target: str, pred: np.ndarray, test, train) -> dict[str, np.ndarray]:
    """Per-image scores `{metric: (image,)}` of a labeler's output `pred` on the renders `test` (a RenderBatch) with
    the position baselines from the renders `train` (see the module docstring)."""
    if target == "depth":
        p, t = _standardised(pred), _standardised(1.0 / test.depth)
        mean_map = _standardised(1.0 / train.depth).mean(0, keepdims=True)
        return {"rmse": np.sqrt(((p - t) ** 2).mean(1)), "spearman": _spearman(p, t),
                "r2_pos": r2_beyond_position(p, t, mean_map)}
    if target == "saliency":
        mask, truth = (pred > 0.5).reshape(len(pred), -1), test.salient.reshape(len(pred), -1)
        inter, total = (mask & truth).sum(1), mask.sum(1) + truth.sum(1)
        return {"dice": np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)}
    if target == "normals":
        def errors(p: np.ndarray) -> dict[str, np.ndarray]:
            return score_normals(p, test.normals, test.surface, resolutions=("image",), n_boot=1).per_image

        own = errors(pred)
        base = errors(np.broadcast_to(mean_normal_map(train.normals, train.surface), pred.shape))
        return {"angle_pos": base["image/angular_mean"] - own["image/angular_mean"],
                "angle_mean": own["image/angular_mean"], "within_11": own["image/within_11.25"],
                "within_22": own["image/within_22.5"], "within_30": own["image/within_30"]}
    if target == "light":
        own = score_directions(pred, test.light_direction, n_boot=1).per_image["angular_error"]
        base = score_directions(direction_position_prediction(mean_direction(train.light_direction), len(pred)),
                                test.light_direction, n_boot=1).per_image["angular_error"]
        return {"angle_pos": base - own, "angle_mean": own}
    raise ValueError(f"no label ceiling defined for target {target!r}")


CURVE_METRIC = {"depth": ("r2_pos", "r2_pos"), "saliency": ("dice", "dice_tuned"), "normals": ("angle_pos", "angle_pos"),
                "light": ("angle_pos", "angle_pos")}  # target -> (ceiling metric, the grid column it is drawn beside)


def label_ceilings(labelers: dict[str, Labeler], n_images: int = 64, size: int = 64, n_boot: int = 1000,
                   seed: int = 0) -> list[dict]:
    """Ceiling rows (the module docstring's columns) of each `{target: labeler}` on `n_images` held-out renders."""
    from ldm.toy.render import HELD_OUT_SEED, render_batch

    test = render_batch(np.arange(HELD_OUT_SEED, HELD_OUT_SEED + n_images), size=size)  # (image, size, size, ...)
    train = render_batch(np.arange(n_images), size=size)
    rows = []
    for target, labeler in labelers.items():
        values = ceiling_values(target, labeler(test.rgb), test, train)
        for metric, per_image in values.items():
            est = bootstrap_ci(per_image, n_boot=n_boot, seed=seed)
            curve = CURVE_METRIC[target][1] if metric == CURVE_METRIC[target][0] else None
            rows.append({"target": target, "metric": metric, "value": est.mean, "lo": est.lo, "hi": est.hi,
                         "n_images": n_images, "n_undefined": est.n_undefined, "labeler": labeler.name, "version": labeler.version,
                         "curve_metric": curve})
    return rows


def read_ceilings(output: str) -> list[dict] | None:
    """The stored ceiling rows, or None (not a toy run, or the label stage has not run)."""
    table = read_table(output, LABEL_CEILINGS)
    return None if table is None else table.to_pylist()


def ceiling_run(cfg: RunConfig, load: Callable[[str], Labeler], stream: TextIO | None = None) -> list[dict] | None:
    """The label stage's last step on the toy models (U-Net and DiT): score the run's labelers of every probe target
    (`load(target)`) against exact truth and store the table; kept when it already holds the same labelers and image
    count. None elsewhere."""
    if cfg.model not in TOY_WORLD_MODELS or cfg.labels.ceiling_images == 0:
        return None
    stream = stream or sys.stderr
    labelers = {t: load(t) for t in cfg.probes.targets}
    n = cfg.labels.ceiling_images
    kept = read_ceilings(cfg.output)
    if kept and {(r["target"], r["version"], r["n_images"]) for r in kept} == {
            (t, lab.version, n) for t, lab in labelers.items()}:
        return kept
    size = load_layout(cfg.output).image[0]
    rows = label_ceilings(labelers, n, size, cfg.probes.bootstrap, cfg.probes.seed)
    write_table(cfg.output, LABEL_CEILINGS, pa.Table.from_pylist(rows, schema=SCHEMA))
    shown = "; ".join(f"{r['target']} {r['metric']} {r['value']:.3g} [{r['lo']:.3g}, {r['hi']:.3g}]"
                      for r in rows if r["curve_metric"])
    print(f"label ceilings ({n} held-out renders vs exact truth): {shown}", file=stream, flush=True)
    return rows
