"""The run config: one tree of dataclasses, defaults in one place, and the checks across fields.

Fields that decide *what* is generated (model, prompts, steps, hooks, ...) are compared when a run is resumed: an output
location that holds a different run refuses to continue and lists the fields that differ. Fields that only decide *how*
it runs (actors, GPUs per actor, retries, progress interval) may change between a run and its resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workflows.config.interventions import InterventionConfig
from workflows.config.names import (ACT_DTYPES, EXTRAS, FEATURE_CONTROLS, IMAGE_SOURCES, MAP_TARGETS, MODEL_CONTROLS,
                                    PROMPT_SOURCES, STAGES, TARGETS)
from workflows.config.schema import ConfigError, flatten, to_dict

@dataclass
class PromptsConfig:
    """Where the (prompt, seed) items come from.

    source "toy": captions of toy-world scenes, `ldm.toy.render.render_batch(seeds).captions`; scene seed = noise seed.
        Train seeds are `first_seed + i`, test seeds `1_000_000 + first_seed + i` (the toy world's split convention).
    source "file": rows of CSV, Parquet or JSONL files with a prompt and a seed column. Either `train` and `test` (one
        file per split, like the paper's split files) or `path` (one file; its `split` column if present, otherwise a
        stable hash of (prompt, seed) puts `test_fraction` of the rows in the test split).
    source "toy-renders" / "images": the noised-image protocol (`ldm.noised`, `workflows.stages.image_source`): the
        model is run on given images instead of generating. "toy-renders": toy-world renders of the toy plan's seeds
        with their exact truth (depth, saliency, normals, light); "images": `path` is a folder of PNG/JPG images with
        optional label files beside them (`NAME.depth.npy|png`, `NAME.saliency.npy|png`, `NAME.normals.npy|png`,
        `NAME.light.npy`, a caption in `NAME.txt`) or a Parquet table (`image_column`: a path or the file's bytes;
        the caption in `prompt_column`, default caption or prompt; label columns named by target). `caption`:
        condition on each image's caption or on the empty prompt; `depth_files`: what depth label files hold.
    """

    source: str = "toy"
    path: str | None = None
    train: str | None = None
    test: str | None = None
    prompt_column: str | None = None  # None: "prompt" or "prompts", whichever exists
    seed_column: str | None = None  # None: "seed" or "seeds"
    split_column: str = "split"
    first_seed: int = 0
    caption: str = "caption"  # image sources: "caption" (the image's caption) or "empty" (the empty prompt)
    image_column: str = "image"  # image sources, Parquet table: the image's path (relative to the table) or bytes
    depth_files: str = "depth"  # image sources: label files hold z-depth ("depth", larger = farther) or "inverse"


@dataclass
class LabelerConfig:
    """One pseudo-labeler (see ldm.labelers): kind toy, dpt, depth-anything (depth); toy, hf (saliency); toy
    (normals, light: toy-world images only)."""

    kind: str = "toy"
    checkpoint: str | None = None  # None: the kind's default (Intel/dpt-large for dpt)
    trust_remote_code: bool = False  # only when you trust the checkpoint's own code


@dataclass
class LabelsConfig:
    """The label stage: which labeler makes each target's pseudo-labels, and where it runs; on the toy model also
    each labeler's ceiling, its score against the exact truth of `ceiling_images` held-out renders
    (`workflows.stages.ceilings`; 0: none)."""

    saliency: LabelerConfig = field(default_factory=LabelerConfig)
    depth: LabelerConfig = field(default_factory=LabelerConfig)
    normals: LabelerConfig = field(default_factory=LabelerConfig)
    light: LabelerConfig = field(default_factory=LabelerConfig)
    ceiling_images: int = 64
    # where labels come from: "auto" (an image source's truth where it has it, else the labelers), "truth" (the
    # source's truth for every probe target, refused where it has none), "labelers" (always the labelers)
    source: str = "auto"
    device: str = "cpu"  # cpu, cuda or auto; with cuda each Ray label task takes one GPU
    shards_per_task: int = 4


@dataclass
class ProbesConfig:
    """The probe grid: one probe per (variant, hook, step, target), plus controls."""

    targets: list[str] = field(default_factory=lambda: list(MAP_TARGETS))  # of TARGETS
    mode: str = "ours"  # "ours" (regularised ridge/logistic, alpha on a validation split) or "paper" (Adam, 30 epochs)
    hooks: list[str] | None = None  # None: every recorded hook point and extra
    steps: list[int] | None = None  # None: every step
    # model variants generated for comparison (permuted) and feature controls (caption: the caption's text embedding x
    # position, `workflows.stages.grid_controls`); the position control is always fit
    controls: list[str] = field(default_factory=lambda: ["permuted", "caption"])
    permute_seed: int = 1  # seed of the permuted-weights control
    seed: int = 0  # validation split, shuffled-label control and bootstrap
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals


@dataclass
class RunConfig:
    """Everything one generation run needs. Shapes in the store: `(image, step, h, w, c)` per hook point."""

    # model: `load_model(model, scheduler=..., steps=..., guidance_scale=..., dtype=...)` of the backend module, which
    # provides the ldm API (`load_model` and `capture`, see docs/CONTRACTS.md); "ldm" is ours.
    backend: str = "ldm"
    model: str = "toy"
    scheduler: str = "lms"
    steps: int = 15
    guidance_scale: float = 7.5
    dtype: str = "float32"
    height: int | None = None  # image size in pixels; None: the model's native size (512 for SD v1.4)
    width: int | None = None
    permute_seed: int | None = None  # the paper's control: U-Net weights permuted with this seed (ldm.control)
    # what to generate
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    num_images: int | None = 48  # toy: required; files: None = every row, else a cap that keeps the split proportions
    test_fraction: float = 0.25
    # what to record: hook point names (None = every self-attention hook of the model) and ldm.capture extras
    hooks: list[str] | None = None
    extras: list[str] = field(default_factory=lambda: ["latent"])
    # where and how it is stored
    output: str = "runs/toy"  # a local path or an fsspec URL (s3://bucket/run, gs://...)
    shard_size: int = 8  # images per work shard (the unit of scheduling, retry and resume)
    batch_size: int = 4  # images per generate() call and per store chunk; must divide shard_size
    compression: str = "lz4"  # "lz4" (Blosc lz4, bit-shuffled), "zstd" (level 1) or "none": docs/store.md
    act_dtype: str = "float16"  # how activations are stored: float16, bfloat16, float8_e4m3 (half the bytes, scaled)
    # how it runs (may change on resume)
    actors: int | None = None  # None: one per GPU, or one per `cpus_per_actor` CPUs without GPUs
    gpus_per_actor: float = 1.0
    cpus_per_actor: int = 1
    max_retries: int = 2  # extra attempts for a shard after its first failure
    progress_every: float = 10.0  # seconds between progress lines
    # later stages (they never change the generated data)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))


# Fields that may differ between a run and its resume: they change scheduling or location, never the data.
RUNTIME_FIELDS = ("actors", "gpus_per_actor", "cpus_per_actor", "max_retries", "progress_every", "output")
# Sections for the stages after generation: each stage checks its own settings, generation ignores them.
STAGE_SECTIONS = ("labels.", "probes.", "interventions", "stages")

_CHOICES = {
    "prompts.source": PROMPT_SOURCES,
    "prompts.caption": ("caption", "empty"),
    "prompts.depth_files": ("depth", "inverse"),
    "labels.source": ("auto", "truth", "labelers"),
    "compression": ("lz4", "zstd", "none"),
    "act_dtype": ACT_DTYPES,
    "extras": EXTRAS,
    "probes.targets": TARGETS,
    "probes.mode": ("ours", "paper"),
    "probes.controls": MODEL_CONTROLS + FEATURE_CONTROLS,
    "stages": STAGES,
}


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and combinations; raise ConfigError naming the field."""
    p = cfg.prompts
    fields = to_dict(cfg)
    for name, choices in _CHOICES.items():
        value = fields
        for part in name.split("."):
            value = value[part]
        for v in value if isinstance(value, list) else [value]:
            if v not in choices:
                raise ConfigError(f"{name}: {v!r} is not one of {', '.join(choices)}")
    if cfg.steps < 1:
        raise ConfigError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {cfg.shard_size}")
    if cfg.batch_size < 1 or cfg.shard_size % cfg.batch_size:
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be >= 1 and divide shard_size ({cfg.shard_size}), "
                          "so that no two shards ever write the same store chunk")
    if cfg.num_images is not None and cfg.num_images < 1:
        raise ConfigError(f"num_images must be >= 1 or null, got {cfg.num_images}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1], got {cfg.test_fraction}")
    if cfg.actors is not None and cfg.actors < 1:
        raise ConfigError(f"actors must be >= 1 or null (automatic), got {cfg.actors}")
    if cfg.gpus_per_actor <= 0 or cfg.cpus_per_actor < 1 or cfg.max_retries < 0:
        raise ConfigError("gpus_per_actor must be > 0, cpus_per_actor >= 1 and max_retries >= 0")
    if not cfg.output:
        raise ConfigError("output must name a directory or URL")
    if p.source in ("toy", "toy-renders"):
        if cfg.num_images is None:
            raise ConfigError(f"num_images is required with prompts.source {p.source!r}")
        if any((p.path, p.train, p.test)):
            raise ConfigError(f"prompts.path/train/test are for prompts.source 'file' or 'images', not {p.source!r}")
    elif p.source == "images":
        if not p.path or p.train or p.test:
            raise ConfigError("prompts.source 'images' needs prompts.path (a folder of images or a Parquet table), "
                              "and no prompts.train/test")
    else:
        if p.path and (p.train or p.test):
            raise ConfigError("prompts: give either path (one file) or train and test (one file per split), not both")
        if not p.path and not (p.train and p.test):
            raise ConfigError("prompts.source 'file' needs prompts.path, or both prompts.train and prompts.test")
    if p.source not in IMAGE_SOURCES:
        if p.caption != "caption":
            raise ConfigError(f"prompts.caption: {p.caption} is for image sources ({', '.join(IMAGE_SOURCES)}); a "
                              "generation is always conditioned on its prompt")
        if cfg.labels.source == "truth":
            raise ConfigError(f"labels.source: truth needs images that come with it (prompts.source "
                              f"{' or '.join(IMAGE_SOURCES)}); generated images have only the labelers' labels: use "
                              "labels.source auto or labelers")
    elif "intervene" in cfg.stages:
        kept = [s for s in cfg.stages if s != "intervene"]
        raise ConfigError(f"stages: intervene edits a generation and regenerates it, but prompts.source {p.source} "
                          f"runs the model on given images; drop it: stages: [{', '.join(kept)}]")
    if cfg.hooks is not None and not cfg.hooks:
        raise ConfigError("hooks: give at least one hook point, or null for all of them")
    if cfg.probes.bootstrap < 10:
        raise ConfigError(f"probes.bootstrap must be >= 10, got {cfg.probes.bootstrap}")
    if cfg.labels.ceiling_images < 0:
        raise ConfigError(f"labels.ceiling_images must be >= 0 (0: no label ceilings), got {cfg.labels.ceiling_images}")
    if cfg.labels.shards_per_task < 1:
        raise ConfigError(f"labels.shards_per_task must be >= 1, got {cfg.labels.shards_per_task}")
    return cfg



def data_differences(a: RunConfig | dict, b: RunConfig | dict) -> list[str]:
    """Dotted names of the fields that change the generated data and differ between two configs, e.g. ["steps"]."""
    fa = flatten(a if isinstance(a, dict) else to_dict(a))
    fb = flatten(b if isinstance(b, dict) else to_dict(b))
    return sorted(k for k in set(fa) | set(fb)
                  if k not in RUNTIME_FIELDS and not k.startswith(STAGE_SECTIONS) and fa.get(k) != fb.get(k))
