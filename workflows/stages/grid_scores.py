"""How the probe grid scores one probe's predictions: the metrics of each target at image and layer resolution, the
headline and beyond-position values per image (for paired margins), the saliency threshold chosen on training
images, and the flags that mark a score held by construction (a constant prediction, an alpha at the grid's edge).

Headline metrics (`HEADLINE`), those a claim is judged on and a layer chosen by:
* saliency: Dice at the threshold chosen on the probe's own training predictions (`dice_tuned`), fair to every
  variant alike; the paper's Dice at 0.5 stays as the `dice` column, AUROC and AP beside it need no threshold;
* depth: R2 beyond position (`r2_pos`).
Beyond position (`BEYOND_POSITION`): what a probe that gets position for free adds to position alone, 0 for the
position-only prediction: saliency `dev_pos` (`metrics.deviance_beyond_position`, against the position-basis probe
at the same resolution), depth `r2_pos` (against the training mean map).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ldm.errors import UserError
from probes.blocks import choose_threshold, upsampled_cross_entropy, upsampled_depth_metrics, upsampled_saliency_metrics
from probes.linear import LinearProbe
from probes.metrics import (
    Scores, bootstrap_many, deviance_beyond_position, depth_metrics, is_constant, saliency_metrics, score_depth,
    score_saliency,
)
from probes.resample import upsample_nearest
from workflows.stages.grid_data import FIT, TEST, TRAIN, GridData

METRIC_NAMES = {  # probes.metrics / probes.angular keys -> metrics.parquet columns (docs/CONTRACTS.md)
    "dice_fg": "dice", "dice_bg": "dice_bg", "iou": "iou", "auroc": "auroc", "ap": "ap", "dice_tuned": "dice_tuned",
    "deviance_beyond_position": "dev_pos",
    "rmse": "rmse", "spearman": "spearman", "pearson": "pearson", "r2_beyond_position": "r2_pos",
    # normals and light (`grid_vectors`): degrees; the light's per-image error is its mean's value
    "angular_mean": "angle_mean", "angular_error": "angle_mean", "angular_median": "angle_median",
    "within_11.25": "within_11", "within_22.5": "within_22", "within_30": "within_30",
    "angle_beyond_position": "angle_pos",
}
METRIC_KEYS = {"saliency": ("dice_fg", "dice_bg", "iou", "auroc", "ap", "dice_tuned", "deviance_beyond_position"),
               "depth": ("rmse", "pearson", "spearman", "r2_beyond_position"),
               "normals": ("angular_mean", "angular_median", "within_11.25", "within_22.5", "within_30",
                           "angle_beyond_position"),
               "light": ("angular_error", "within_11.25", "within_22.5", "within_30", "angle_beyond_position")}
# normals and light: degrees gained over the position-only prediction (mean normal map, mean light), per image
# `error(position) - error(probe)`: higher is better and 0 for position alone, like the other headlines
HEADLINE = {"saliency": "dice_tuned", "depth": "r2_beyond_position", "normals": "angle_beyond_position",
            "light": "angle_beyond_position"}
BEYOND_POSITION = {"saliency": "deviance_beyond_position", "depth": "r2_beyond_position",
                   "normals": "angle_beyond_position", "light": "angle_beyond_position"}


def check_position_controls(targets) -> None:
    """Every target needs a beyond-position measure (its position control) before anything is fit."""
    missing = [t for t in targets if t not in BEYOND_POSITION]
    if missing:
        raise UserError(f"target(s) {', '.join(missing)} have no position control defined (BEYOND_POSITION in "
                        f"workflows/stages/grid_scores.py covers {', '.join(BEYOND_POSITION)}); define one or remove "
                        "them from probes.targets")


def metric_columns(scores: Scores, target: str) -> dict[str, float | list[float]]:
    """Every estimate as `name, name_lo, name_hi`, and per test image (in the grid's test order, so margins between
    probes are paired over the same images) the headline metric (`per_image`) and the beyond-position one
    (`per_image_beyond`)."""
    headline = scores.per_image[f"image/{HEADLINE[target]}"]
    beyond = scores.per_image.get(f"image/{BEYOND_POSITION[target]}", np.full(len(headline), np.nan))
    row: dict = {"per_image": [float(v) for v in headline], "per_image_beyond": [float(v) for v in beyond]}
    for key, est in scores.estimates.items():
        resolution, metric = key.split("/")
        name = ("" if resolution == "image" else "layer_") + METRIC_NAMES[metric]
        row.update({name: est.mean, f"{name}_lo": est.lo, f"{name}_hi": est.hi})
    return row


def score_prediction(target: str, pred: np.ndarray, data: GridData, positioned: np.ndarray | None = None,
                     split: int = TEST, threshold: float | None = None) -> Scores:
    """Score predictions `(image, h, w)` for `target` (probability for saliency, standardised depth) on the images of
    `split` (`grid_data`: TEST with layer-resolution metrics, ranking metrics and bootstrap intervals; TRAIN, VAL or
    FIT at image resolution only, no bootstrap); `positioned`: the prediction of the target's positioned probe (depth:
    with the mean map as a channel, for R2 beyond position; saliency: with the position basis, for deviance beyond
    position, test split only); `threshold`: saliency's, chosen on training predictions, for `dice_tuned`.

    Image-resolution metrics come from the labels' block sums (`blocks.upsampled_*_metrics`, equal to scoring the
    nearest-upsampled arrays); an image size that is no multiple of the layer's is scored from the upsampled arrays
    (blocks of one pixel). Non-finite predictions go to `metrics.score_saliency` / `score_depth`, which flag them."""
    truth, test = data.split_labels(target, split), split == TEST
    h, w = pred.shape[1:]
    H, W = truth.shape[1:]
    if not (np.isfinite(pred).all() and (positioned is None or np.isfinite(positioned).all())):
        kw = {"n_boot": data.n_boot, "seed": data.seed} if test else {"n_boot": 1, "resolutions": ("image",)}
        if target == "saliency":
            return score_saliency(pred, truth, tuned_threshold=threshold, ranking=test, **kw)
        return score_depth(pred, truth, data.mean_maps["depth"], positioned=positioned, ranks=test,
                           truth_ranks=data.depth_ranks(h, w) if test else None, **kw)
    layer: dict[str, np.ndarray] = {}
    if test:
        layer_truth = data.area_labels(target, h, w, split)
        layer = (saliency_metrics(pred, layer_truth, tuned=threshold) if target == "saliency" else
                 depth_metrics(pred, layer_truth, data.mean_map_at("depth", h, w), positioned,
                               (rankdata(pred.reshape(len(pred), -1), axis=1), data.depth_ranks(h, w)["layer"])))
    reference = data.position_reference(h, w) if target == "saliency" and positioned is not None and test else None
    if H % h or W % w:  # block sums need an integer factor: score the upsampled arrays as blocks of one pixel
        pred, positioned, reference = (None if a is None else upsample_nearest(a, H, W)
                                       for a in (pred, positioned, reference))
        h, w = H, W
    blocks = data.block_truth(target, h, w, split)
    if target == "saliency":
        image = upsampled_saliency_metrics(pred, blocks, tuned=threshold, ranking=test)
        if reference is not None:
            image["deviance_beyond_position"] = deviance_beyond_position(
                upsampled_cross_entropy(positioned, blocks), upsampled_cross_entropy(reference, blocks))
        fg = blocks.totals["t"]
        flags = {"n_nonfinite": 0, "n_empty_mask": int((fg == 0).sum()),
                 "n_degenerate_mask": int(((fg == 0) | (fg == blocks.pixels)).sum())}
    else:
        m_layer = data.mean_map_at("depth", h, w)
        p_ranks = rankdata(pred.reshape(len(pred), -1), axis=1) if test else None
        image = upsampled_depth_metrics(pred, blocks, None if positioned is None else positioned - m_layer, p_ranks)
        flags = {"n_nonfinite": 0, "n_constant_depth": int(image["constant_truth"].sum())}
    per = {f"{res}/{k}": v for res, metrics in (("image", image), ("layer", layer))
           for k, v in metrics.items() if k in METRIC_KEYS[target]}
    return Scores(estimates=bootstrap_many(per, n_boot=data.n_boot if test else 1, seed=data.seed), per_image=per,
                  flags=flags)


def train_threshold(pred: np.ndarray, data: GridData, split: int = TRAIN) -> float:
    """The threshold of `dice_tuned`: the candidate (`metrics.THRESHOLDS`) with the best mean image-resolution Dice
    of a probe's predictions `(image, h, w)` on training images (TRAIN, or FIT for a held-out solution's threshold,
    `blocks.choose_threshold`); test images take no part."""
    H, W = data.labels["saliency"][TRAIN].shape[1:]
    h, w = pred.shape[1:]
    if H % h or W % w:  # block sums need an integer factor: upsample first (blocks of one pixel)
        pred, (h, w) = upsample_nearest(pred, H, W), (H, W)
    assert split in (TRAIN, FIT)
    return choose_threshold(pred, data.block_truth("saliency", h, w, split))


def constant_prediction(target: str, pred: np.ndarray, data: GridData, positioned: np.ndarray | None = None,
                        threshold: float | None = None) -> bool:
    """Whether test predictions `(image, h, w)` behind a row's headline carry nothing (`metrics.is_constant`):
    saliency, the probabilities constant or every pixel on the same side of the headline's `threshold` (the mask
    behind `dice_tuned` all background or all foreground); depth, the prediction constant, or the deviation from the
    mean map of the prediction behind `r2_pos` (the positioned one, else `pred` itself) constant, as for the mean
    map itself."""
    if target == "saliency":
        return is_constant(pred) or is_constant(pred, threshold=0.5 if threshold is None else threshold)
    m_layer = data.mean_map_at("depth", *pred.shape[1:])
    return is_constant(pred) or is_constant((pred if positioned is None else positioned) - m_layer)


def alpha_at_edge(probe: LinearProbe | None) -> bool | None:
    """Whether the probe's chosen alpha is the smallest or largest of its alpha grid (the search may have wanted to
    go further); None without a search (no probe, the paper's trainer, a single alpha)."""
    if probe is None or len(probe.alpha_grid) < 2:
        return None
    return bool(probe.alpha in (probe.alpha_grid.min(), probe.alpha_grid.max()))
