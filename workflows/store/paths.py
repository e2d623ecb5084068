"""Every path under a run's output location, named once (the on-disk contract is `workflows.store`'s docstring and
docs/CONTRACTS.md). Paths are relative to `<output>`, with "/" separators, for local folders and object stores alike;
arrays are relative to the Zarr group `STORE`."""

from __future__ import annotations

STORE = "store.zarr"  # the Zarr group; records and tables sit beside it
CONFIG = "config.yaml"  # the run config, written last when the store is created
LEASE = "lease.json"  # the running owner of the output (workflows.store.lease)
MANIFEST = "manifest.parquet"  # one row per image: image, prompt, seed, split, shard, status
VARIANTS = "variants"  # variants/<name>/: a control model's run, laid out like this one

# completion records (workflows.store.records): the unit's outputs are valid exactly when its record exists
SHARD_RECORDS = "shards"  # shards/<shard:06d>.json (and .failed.json)
PROBE_ROWS = "probes/rows"  # probes/rows/<variant>/<hook>/<step>.json: a probe group's metric rows
INTERVENTION_RECORDS = "interventions/records"  # interventions/records/<unit key>.json
PATCHING_RECORDS = "interventions/patching/records"  # interventions/patching/records/<image:06d>.json: a pair's rows

PROBE_METRICS = "probes/metrics.parquet"
LABEL_CEILINGS = "label_ceilings.parquet"  # each labeler scored against exact truth (toy runs, the label stage)
CAPTION_EMBEDDINGS = "probes/captions.safetensors"  # image (image,) int64, embedding (image, d): the caption control's
INTERVENTIONS = "interventions"  # the intervention stage's folder
INTERVENTION_CONFIG = f"{INTERVENTIONS}/config.json"
INTERVENTION_METRICS = f"{INTERVENTIONS}/metrics.parquet"
INTERVENTION_SUMMARY = f"{INTERVENTIONS}/summary.parquet"
CALIBRATION = "calibration"  # the calibration's records folder and table name
CALIBRATION_TABLE = f"{INTERVENTIONS}/{CALIBRATION}.parquet"
CALIBRATION_CHOICE = f"{INTERVENTIONS}/{CALIBRATION}.json"
PATCHING_CONFIG = f"{INTERVENTIONS}/patching/config.json"  # the settings the map was made with
PATCHING_MAP = f"{INTERVENTIONS}/patching.parquet"  # one row per (view, hook, step): the causal-effect map
PATCHING_CELLS = f"{INTERVENTIONS}/patching_cells.parquet"  # one row per (pair, view, hook, step): each patched image
MOVING_OBJECT_GIF = f"{INTERVENTIONS}/moving_object.gif"
REPORT = "report/index.html"

IMAGES = "images"  # (image, y, x, rgb) uint8


def label_records(target: str) -> str:
    return f"label_records/{target}"  # label_records/<target>/<shard:06d>.json


def shard_key(shard: int) -> str:
    return f"{shard:06d}"


def activations(hook: str) -> str:
    """(image, step, h, w, c) float16 (float32 for the latent and x0 extras)."""
    return f"acts/{hook}/act"


def activation_scales(hook: str) -> str:
    """(image, step, c) float32: the scales of float8 activations (`act_dtype: float8_e4m3`)."""
    return f"acts/{hook}/scale"


def labels(target: str) -> str:
    """float32 pseudo-labels: (image, y, x) for saliency and depth, (image, y, x, 3) unit or zero for normals,
    (image, 3) unit for the light."""
    return f"labels/{target}"


def label_mask(target: str) -> str:
    """(image, y, x) bool: the pixels with a label (normals: where the labeler sees a surface)."""
    return f"labels/{target}_valid"


def probe_weights(group_path: str) -> str:
    return f"probes/weights/{group_path}.safetensors"


def edited_images(task: str, method: str) -> str:
    """(image, target, y, x, rgb) uint8: a (task, method)'s edited test images."""
    return f"{INTERVENTIONS}/{task}/{method}/images"


def variant_output(output: str, variant: str) -> str:
    """Where a model variant's run lives: the run itself for "ldm", `variants/<name>` for a control."""
    return output if variant == "ldm" else f"{output.rstrip('/')}/{VARIANTS}/{variant}"


# an image-source run's inputs (the noised-image protocol, workflows.stages.image_source), staged before any shard runs
INPUT_IMAGES = "inputs/images"  # (image, y, x, rgb) uint8: the given images; each shard copies its own into IMAGES
INPUT_RECORDS = "input_records"  # input_records/staged.json: the inputs are whole (names, truth targets, digest)


def truth(target: str) -> str:
    """The source's exact labels, shaped like `labels(target)`; the label stage copies them into `labels/<target>`."""
    return f"inputs/truth/{target}"
