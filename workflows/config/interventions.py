"""What the interventions stage does: `InterventionConfig`, the `interventions:` section of a run config.

Edit strength is either given (`strength`, one number or per task) or chosen on training images (`calibrate`): each
edit method of a task tries the candidate strengths on the first `calibrate_images` *training* images (targets drawn
as for test images) and keeps the one with the highest mean gain towards the target; the random control takes the
strength of the edit whose norm it copies. The test split never takes part in the choice.

`PatchingConfig` (`interventions.patching`) sizes the activation-patching map (workflows/stages/patching.py), on
training pairs only; `saliency_hooks: causal` (or `depth_hooks`) makes the edits take their layers and steps from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ldm.hooks import hook_position, is_block_output
from workflows.config.names import MAP_TARGETS, METHODS
from workflows.config.schema import ConfigError, state

TASKS = MAP_TARGETS  # what the stage edits: the per-pixel probe targets


@dataclass(frozen=True)
class TargetSpec:
    """How targets are drawn: `count` per image, each component's magnitude in [low, high) px per 512 px."""

    count: int = 5
    low: float = 90.0
    high: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"interventions.targets.count: targets per image must be >= 1, got {self.count}")
        if not 0 <= self.low < self.high:
            raise ConfigError(f"interventions.targets: translation range needs 0 <= low < high, got [{self.low}, {self.high})")




VIEWS = ("cell", "window")  # patching: one (layer, step) copied, or steps 0..s at one layer
CAUSAL = "causal"  # a hooks value: the layers and steps come from the patching map (workflows/stages/causal.py)


@dataclass(frozen=True)
class PatchingConfig:
    """The activation-patching map: for each of the first `pairs` training images with a salient object, the
    counterfactual is the same prompt drawn with the one of `candidates` other seeds whose salient mask overlaps the
    image's least (Dice at most `max_overlap`, else the pair is not usable); its activations are copied into the
    image's generation at each (layer, step) of `layers` x `steps` (view "cell") and at steps 0..s of one layer
    ("window"), `batch` patched generations per generate call. `causal_layers`: how many layers `hooks: causal`
    takes from the map."""

    pairs: int = 8
    candidates: int = 4
    max_overlap: float = 0.5
    layers: list[str] | str | None = None  # None or "all": every U-Net hook of the run
    steps: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 7, 10, 14])
    views: tuple[str, ...] = VIEWS
    batch: int = 16
    causal_layers: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.pairs, int) or self.pairs < 2:
            raise ConfigError(f"interventions.patching.pairs must be at least 2 (a map needs intervals over pairs), "
                              f"got {self.pairs!r}")
        for name in ("candidates", "batch", "causal_layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"interventions.patching.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not _positive(self.max_overlap) or self.max_overlap > 1:
            raise ConfigError(f"interventions.patching.max_overlap must be in (0, 1], got {self.max_overlap!r}")
        if not self.steps or any(not isinstance(s, int) or s < 0 for s in self.steps):
            raise ConfigError(f"interventions.patching.steps must be a non-empty list of steps >= 0, got {self.steps!r}")
        bad = [v for v in self.views if v not in VIEWS]
        if bad or not self.views:
            raise ConfigError(f"interventions.patching.views: choose from {', '.join(VIEWS)}, got {list(self.views)!r}")
        if isinstance(self.layers, str) and self.layers != "all":
            raise ConfigError(f"interventions.patching.layers must be a list of hook names, \"all\" or null; got "
                              f"{self.layers!r}")

    def data_fields(self) -> dict:
        """The fields that decide the map: a resumed patching run must match them. `pairs` is not one: a pair's result
        does not depend on how many there are, so raising it only runs the new pairs (the map uses the first `pairs`)."""
        return {"candidates": self.candidates, "max_overlap": self.max_overlap,
                "layers": self.layers, "steps": list(self.steps), "views": list(self.views)}


@dataclass(frozen=True)
class EditSettings:
    """How the edits of one task are made: where (hooks x steps), how strong, and the parameters of the paper's
    optimiser, the closed form and the random control. `InterventionConfig.edit_settings` makes them for a stage."""

    hooks: tuple[str, ...]
    steps: tuple[int, ...]
    strength: float = 1.0  # every edit a' - a is scaled by this (the random control copies the scaled norm)
    lr: float = 5e-3  # paper edits: Adam learning rate
    iters: int = 128  # paper edits: Adam iterations
    random_reference: str = "closed-form"  # the edit whose per-position norm the random control copies
    units: str = "standardised"  # the closed form's minimal edit in the probe's standardised or raw units
    seed: int = 0  # the random control's directions (with the image id, hook and step)


@dataclass
class InterventionConfig:
    """What the interventions stage does. Hooks None: the task's paper default (saliency: every up-block
    self-attention, the paper's 9 layers in SD v1; depth: every self-attention, the paper's 16); "all": every U-Net
    hook of the run."""

    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    saliency_hooks: list[str] | str | None = None
    saliency_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    depth_hooks: list[str] | str | None = None
    depth_steps: list[int] = field(default_factory=lambda: [0, 1, 2])
    targets: TargetSpec = field(default_factory=TargetSpec)
    variant: str = "ldm"  # whose probes steer the edits (the main run's, normally)
    lr: float = 5e-3  # paper edits: Adam learning rate
    iters: int = 128  # paper edits: Adam iterations
    random_reference: str = "closed-form"  # the edit whose per-position norm the random control copies
    strength: float | dict[str, float] = 1.0  # every edit a' - a is scaled by this (the random control copies the
    # scaled norm); one number for every task, or {task: number} (tasks left out: 1)
    calibrate: dict[str, list[float]] | None = None  # {task: candidate strengths}: chosen per method on training
    # images, replacing `strength` for those tasks
    calibrate_images: int = 8  # the first N training images
    chosen: dict[str, float] = state(dict, by="the calibration (interventions.calibrate)")  # "task/method" -> strength, set by the calibration
    closed_form_units: str = "standardised"  # the closed form's minimal edit in the probe's standardised or raw units
    max_images: int | None = None  # None: every test image; else the first N (quick looks)
    patching: PatchingConfig | None = None  # the activation-patching map on training pairs (off: None)
    # success = moved AND intact (docs/interventions.md, "Integrity"); fixed before any edit is scored
    success_dice: float = 0.5  # saliency moved: Dice(new mask, target) at least this
    success_depth_gain: float = 0.1  # depth moved: RMSE to the target down by at least this (standardised units)
    background_ratio: float = 0.5  # background kept: its distance (pixels and VAE latent) at most this x a new seed's
    object_distance: float = 0.5  # object kept: colour-histogram distance (0-1) before/after at most this
    actors: int | None = None  # Ray: None = one per GPU, or one per `cpus_per_actor` CPUs
    cpus_per_actor: int = 1
    gpus_per_actor: float = 1.0
    max_retries: int = 1

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS] + [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"interventions: unknown task/method {', '.join(bad)}; tasks: {', '.join(TASKS)}; "
                             f"methods: {', '.join(METHODS)}")
        if self.closed_form_units not in ("standardised", "raw"):
            raise ConfigError("interventions.closed_form_units must be 'standardised' or 'raw'")
        if self.random_reference not in ("closed-form", "paper"):
            raise ConfigError("interventions.random_reference must be 'closed-form' or 'paper'")
        if isinstance(self.targets, dict):
            self.targets = TargetSpec(**self.targets)
        if isinstance(self.patching, dict):  # dataclasses.asdict of a config, as the Ray actors get it
            self.patching = PatchingConfig(**self.patching)
        for name in ("saliency_hooks", "depth_hooks"):
            if isinstance(getattr(self, name), str) and getattr(self, name) not in ("all", CAUSAL):
                raise ConfigError(f"interventions.{name} must be a list of hook names, \"all\", \"causal\" (from the "
                                  f"patching map) or null; got {getattr(self, name)!r}")
        strengths = self.strength if isinstance(self.strength, dict) else {t: self.strength for t in TASKS}
        _check_tasks("strength", strengths)
        if not all(_positive(v) for v in strengths.values()):
            raise ConfigError(f"interventions.strength must be a positive number (or {{task: number}}), got {self.strength!r}")
        if self.calibrate is not None:
            if not isinstance(self.calibrate, dict):
                raise ConfigError(f"interventions.calibrate must map tasks to candidate strengths, e.g. {{saliency: [4, 8, 16]}}; "
                                 f"got {self.calibrate!r}")
            _check_tasks("calibrate", self.calibrate)
            for task, values in self.calibrate.items():
                if isinstance(values, (int, float)) or not values or not all(_positive(v) for v in values):
                    raise ConfigError(f"interventions.calibrate.{task} must be a non-empty list of positive strengths, "
                                     f"got {values!r}")
            both = [t for t in self.calibrate if isinstance(self.strength, dict) and t in self.strength]
            if both:
                raise ConfigError(f"interventions: {', '.join(both)}: give either a strength or calibrate candidates, not both")
        for name, low, high in (("success_dice", 0.0, 1.0), ("success_depth_gain", 0.0, None),
                                ("background_ratio", 0.0, None), ("object_distance", 0.0, 1.0)):
            value = getattr(self, name)
            if not _positive(value) or (high is not None and value > high):
                raise ConfigError(f"interventions.{name} must be in ({low:g}, {'inf' if high is None else f'{high:g}'}], "
                                  f"got {value!r}")
        if not isinstance(self.calibrate_images, int) or self.calibrate_images < 1:
            raise ConfigError(f"interventions.calibrate_images must be a positive integer, got {self.calibrate_images!r}")

    def hooks(self, task: str) -> list[str] | str | None:
        return self.saliency_hooks if task == "saliency" else self.depth_hooks

    def steps(self, task: str) -> list[int]:
        return list(self.saliency_steps if task == "saliency" else self.depth_steps)

    def calibrated_methods(self, task: str) -> list[str]:
        """The methods whose strength the calibration chooses for `task`: the edit methods run (random copies its
        reference's strength, so the reference is calibrated whenever random runs)."""
        if not self.calibrate or task not in self.calibrate:
            return []
        wanted = {self.random_reference if m == "random" else m for m in self.methods}
        return [m for m in METHODS if m in wanted]

    def strength_of(self, task: str, method: str = "closed-form") -> float:
        """The strength `method`'s edits of `task` use: the calibrated one when chosen, else `strength`."""
        reference = self.random_reference if method == "random" else method
        if f"{task}/{reference}" in self.chosen:
            return float(self.chosen[f"{task}/{reference}"])
        return float(self.strength.get(task, 1.0) if isinstance(self.strength, dict) else self.strength)

    def edit_settings(self, task: str, hooks: Sequence[str], strength: float | None = None) -> EditSettings:
        """The settings of `task`'s edits on `hooks` (resolved from `hooks(task)` by the stage), at `strength`
        (default: `strength_of(task)`)."""
        return EditSettings(hooks=tuple(hooks), steps=tuple(self.steps(task)),
                            strength=self.strength_of(task) if strength is None else float(strength), lr=self.lr,
                            iters=self.iters, random_reference=self.random_reference, units=self.closed_form_units,
                            seed=self.targets.seed)

    def data_fields(self) -> dict:
        """The fields that decide what an edit produces: a resumed stage must match them."""
        return {"saliency_hooks": self.saliency_hooks, "saliency_steps": list(self.saliency_steps),
                "depth_hooks": self.depth_hooks, "depth_steps": list(self.depth_steps),
                "targets": vars(self.targets).copy(), "variant": self.variant, "lr": self.lr,
                "iters": self.iters, "random_reference": self.random_reference, "strength": self.strength,
                "calibrate": self.calibrate, "calibrate_images": self.calibrate_images,
                "closed_form_units": self.closed_form_units}


def _check_tasks(name: str, by_task: dict) -> None:
    unknown = [t for t in by_task if t not in TASKS]
    if unknown:
        raise ConfigError(f"interventions: {name} for unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def default_hooks(task: str, unet_hooks: Sequence[str]) -> list[str]:
    """The paper's layers: saliency on the up-block self-attentions, depth on all of them. A diffusion transformer has
    no up blocks: saliency edits the attention outputs of the later half of its blocks in forward order (SD3's
    `joint_k`, Flux's `double_k` then `single_k`, PixArt's `block_k`: the half nearer the output, as the up blocks
    are in a U-Net), depth edits every attention output. SD3's block outputs `joint_k_out` are left out of both: the
    same block's attention is already edited, and editing both would edit it twice."""
    if any(h.startswith(("down_", "mid_", "up_")) for h in unet_hooks):
        return [h for h in unet_hooks if h.startswith("up_")] if task == "saliency" else list(unet_hooks)
    attention = sorted((h for h in unet_hooks if not is_block_output(h)), key=hook_position) or list(unet_hooks)
    return attention[len(attention) // 2:] if task == "saliency" else attention
