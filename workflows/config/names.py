"""The names a config chooses from, each defined once: stages, probe targets (= intervention tasks), edit methods and
the capture extras (ldm's)."""

from __future__ import annotations

from ldm.hooks import EXTRAS

STAGES = ("generate", "controls", "label", "probe", "intervene", "report")  # in the order a run chains them
MAP_TARGETS = ("saliency", "depth")  # one number per pixel: the paper's targets, the default, the intervention tasks
# one unit 3-vector per pixel (surface normals, with a mask of the pixels that have one) or per image (the light
# direction), in the toy renderer's camera coordinates (ldm.toy.render): probed by `probes.vectors`
VECTOR_TARGETS = ("normals", "light")
TARGETS = MAP_TARGETS + VECTOR_TARGETS  # probe targets and label targets
METHODS = ("paper", "closed-form", "random")  # edit methods (workflows.stages.edits), in the order they run
# probes.controls: model variants generated for comparison (`permuted`), and feature controls fit beside the grid
# (`caption`; the position control is always fit: it is the reference of saliency beyond position)
MODEL_CONTROLS = ("permuted",)
ACT_DTYPES = ("float16", "bfloat16", "float8_e4m3")  # how activations are stored (workflows.store.act_dtype)
FEATURE_CONTROLS = ("caption",)
# prompts.source: generated images (toy captions, prompt files), or given images run through the noised-image protocol
IMAGE_SOURCES = ("toy-renders", "images")
PROMPT_SOURCES = ("toy", "file") + IMAGE_SOURCES

__all__ = ["ACT_DTYPES", "EXTRAS", "FEATURE_CONTROLS", "IMAGE_SOURCES", "MAP_TARGETS", "PROMPT_SOURCES", "METHODS", "MODEL_CONTROLS", "STAGES", "TARGETS",
           "VECTOR_TARGETS"]
