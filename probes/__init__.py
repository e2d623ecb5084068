"""Probe math and metrics on plain arrays (numpy / torch): no Ray, no diffusers; imports no other sceneprobe package.

Activations are `(image, h, w, c)` arrays (float16/float32, any array-like that slices along the first axis); labels
`(image, H, W)` at image resolution (normals: `(image, H, W, 3)` with a valid-pixel mask; directions: `(image, 3)`).
See docs/probes.md.
"""

from probes.angular import score_directions, score_normals
from probes.baselines import (
    PermutedImages,
    derangement,
    fit_control_probe,
    position_map,
    position_prediction,
    selectivity,
)
from probes.baselines_vectors import (
    fit_direction_control,
    fit_normal_control,
    mean_direction,
    mean_normal_map,
)
from probes.chunks import NonFiniteError, channel_stats
from probes.edits import closed_form_edit, optimise_edit, probe_loss, random_edit
from probes.fit import fit_probe
from probes.linear import LinearProbe, fit_logistic, fit_ridge, layer_targets, validation_split
from probes.blocks import choose_threshold
from probes.metrics import (
    THRESHOLDS,
    DepthScaler,
    Estimate,
    Scores,
    bootstrap_ci,
    depth_metrics,
    dice_iou,
    is_constant,
    ranking_metrics,
    score_depth,
    score_saliency,
)
from probes.paper import paper_loss, train_paper_probe
from probes.resample import downsample_area, upsample_nearest
from probes.vectors import VectorProbe, fit_direction_ridge, fit_normal_ridge, pool_activations

__all__ = [
    "THRESHOLDS",
    "DepthScaler",
    "Estimate",
    "LinearProbe",
    "NonFiniteError",
    "PermutedImages",
    "Scores",
    "VectorProbe",
    "bootstrap_ci",
    "channel_stats",
    "choose_threshold",
    "closed_form_edit",
    "depth_metrics",
    "derangement",
    "dice_iou",
    "downsample_area",
    "fit_control_probe",
    "fit_direction_control",
    "fit_direction_ridge",
    "fit_logistic",
    "fit_normal_control",
    "fit_normal_ridge",
    "fit_probe",
    "fit_ridge",
    "is_constant",
    "layer_targets",
    "mean_direction",
    "mean_normal_map",
    "optimise_edit",
    "paper_loss",
    "pool_activations",
    "position_map",
    "position_prediction",
    "probe_loss",
    "random_edit",
    "ranking_metrics",
    "score_depth",
    "score_directions",
    "score_normals",
    "score_saliency",
    "selectivity",
    "train_paper_probe",
    "upsample_nearest",
    "validation_split",
]
