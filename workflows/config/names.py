"""The names a config chooses from, each defined once: stages, probe targets (= intervention tasks), edit methods and
the capture extras (ldm's)."""

from __future__ import annotations

from ldm.hooks import EXTRAS

STAGES = ("generate", "controls", "label", "probe", "intervene", "report")  # in the order a run chains them
TARGETS = ("saliency", "depth")  # probe targets, label targets and intervention tasks
METHODS = ("paper", "closed-form", "random")  # edit methods (workflows.stages.edits), in the order they run
# probes.controls: model variants generated for comparison (`permuted`), and feature controls fit beside the grid
# (`caption`; the position control is always fit: it is the reference of saliency beyond position)
MODEL_CONTROLS = ("permuted",)
ACT_DTYPES = ("float16", "bfloat16", "float8_e4m3")  # how activations are stored (workflows.store.act_dtype)
FEATURE_CONTROLS = ("caption",)

__all__ = ["ACT_DTYPES", "EXTRAS", "FEATURE_CONTROLS", "METHODS", "MODEL_CONTROLS", "STAGES", "TARGETS"]
