"""Hook points: every U-Net self-attention output, named by its position, plus the paper's extra pseudo-layers.

A U-Net hook point is the output projection of a transformer block's `attn1` (`...attn1.to_out.0`, bias included),
i.e. the self-attention output before the residual add, as probed in the paper. Names come from the position in the
U-Net: `down_{block}_{attention}`, `mid_{attention}`, `up_{block}_{attention}`, with `_t{k}` appended when a block
stacks several transformer layers (SDXL). For SD v1 that is `down_0_0 ... down_2_1, mid_0, up_1_0 ... up_3_2`, 16 in
all. Diffusion transformers (SD3, Flux, PixArt) have their own points, found in `ldm.denoisers`.

`hooked` is the one hook mechanism behind both `ldm.capture` (read) and `ldm.edit` (write), for every denoiser: the
user names hook points and steps, and a function `fn(step, name, act)` sees each activation as `(batch, h, w, c)`, one
guidance half at a time; when writing, what it returns replaces that half.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from ldm.errors import UserError

# Pseudo-layers that are not U-Net modules: the VAE baseline of the paper, the noisy latent and the predicted x0.
EXTRAS = ("vae_mid", "latent", "x0")
# Parts of the guidance batch `[unconditional, conditional]` a hook can see.
HALVES = ("cond", "uncond", "both")

# fn(step, name, act `(batch, h, w, c)`): a reader returns None; a writer returns a replacement of the same shape, or
# None to leave that half as it is.
HookFn = Callable[[int, str, torch.Tensor], torch.Tensor | None]


# Where a module's output holds the image tokens: the whole output `(batch, h*w, c)`; the last h*w tokens of a joint
# `[text, image]` sequence (Flux single-stream blocks); the image half of a `(text, image)` pair (SD3 joint blocks).
TAKES = ("all", "image_tail", "pair_image")


@dataclass(frozen=True)
class HookPoint:
    """One probe-able activation. `level` counts the downsamplings between the latent and this layer; `patch` is the
    latent pixels per token side (1 in a U-Net, the patch size in a transformer); `take` is one of `TAKES`."""

    name: str
    module_path: str  # dotted path inside the denoiser (or the pipeline, for extras)
    height: int
    width: int
    channels: int
    level: int = 0
    kind: str = "unet"  # "unet", "transformer" (a module of either denoiser: kind != "extra") or "extra"
    patch: int = 1
    take: str = "all"


def level_size(size: int, level: int) -> int:
    """Spatial size after `level` stride-2 downsamplings (diffusers' 3x3 stride-2 convs round up)."""
    for _ in range(level):
        size = math.ceil(size / 2)
    return size


def _attention_points(section: str, index: int, block, prefix: str, level: int, h: int, w: int) -> list[HookPoint]:
    points = []
    for j, transformer in enumerate(getattr(block, "attentions", None) or []):
        layers = getattr(transformer, "transformer_blocks", [])
        for k, layer in enumerate(layers):
            attn = getattr(layer, "attn1", None)
            if attn is None or getattr(attn, "is_cross_attention", False):
                continue  # only_cross_attention blocks have no self-attention
            name = f"{section}_{index}_{j}" if section != "mid" else f"mid_{j}"
            if len(layers) > 1:
                name += f"_t{k}"
            points.append(
                HookPoint(
                    name=name,
                    module_path=f"{prefix}.attentions.{j}.transformer_blocks.{k}.attn1.to_out.0",
                    height=level_size(h, level),
                    width=level_size(w, level),
                    channels=attn.to_out[0].out_features,
                    level=level,
                )
            )
    return points


def find_unet_hook_points(unet: torch.nn.Module, latent_height: int, latent_width: int) -> list[HookPoint]:
    """Every self-attention output of a `UNet2DConditionModel`, in forward order, at the given latent size."""
    points: list[HookPoint] = []
    level = 0
    for i, block in enumerate(unet.down_blocks):
        points += _attention_points("down", i, block, f"down_blocks.{i}", level, latent_height, latent_width)
        if getattr(block, "downsamplers", None):
            level += 1
    if unet.mid_block is not None:
        points += _attention_points("mid", 0, unet.mid_block, "mid_block", level, latent_height, latent_width)
    for i, block in enumerate(unet.up_blocks):
        points += _attention_points("up", i, block, f"up_blocks.{i}", level, latent_height, latent_width)
        if getattr(block, "upsamplers", None):
            level -= 1
    if not points:
        raise UserError(
            "this U-Net has no self-attention layers (no transformer blocks with attn1); sceneprobe needs a "
            "UNet2DConditionModel with cross-attention blocks, such as Stable Diffusion's"
        )
    return points


def denoiser_of(pipe) -> torch.nn.Module:
    """The network the sampling loop calls each step: `pipe.transformer` if the pipeline has one, else `pipe.unet`."""
    denoiser = getattr(pipe, "transformer", None)
    return denoiser if denoiser is not None else pipe.unet


# Name patterns of each family's hook points, so that a name from another family is reported as such.
NAME_FAMILIES = {
    "a U-Net": re.compile(r"(down|up)_\d+_\d+(_t\d+)?|mid_\d+(_t\d+)?"),
    "an SD3 transformer": re.compile(r"joint_\d+(_out)?"),
    "a Flux transformer": re.compile(r"(double|single)_\d+"),
    "a PixArt transformer": re.compile(r"block_\d+"),
}


def _family_of_name(name: str) -> str | None:
    return next((family for family, pattern in NAME_FAMILIES.items() if pattern.fullmatch(name)), None)


# A hook name's section in its network's forward order: a U-Net's down < mid < up blocks, Flux's double-stream <
# single-stream blocks; SD3's and PixArt's blocks are one section. Extras (`latent`, `vae_mid`) come after all.
SECTIONS = {"down": 0, "mid": 1, "up": 2, "joint": 0, "double": 0, "block": 0, "single": 1}


def hook_position(name: str) -> tuple:
    """Sort key of a hook name in its network's forward order: section, then the block (and layer) numbers, then the
    name (`joint_k` before `joint_k_out`). Flux's `single_0` comes after every `double_k`, a U-Net's `up_0_0` after
    `mid_0`."""
    return SECTIONS.get(name.split("_")[0], len(SECTIONS)), [int(n) for n in re.findall(r"\d+", name)], name


def is_block_output(name: str) -> bool:
    """Whether a hook point is a whole block's output (SD3's `joint_k_out`) rather than an attention output (every
    U-Net point, `joint_k`, `double_k`, `single_k`, `block_k`)."""
    return name.endswith("_out")


def select_hook_points(points: Sequence[HookPoint], names: Sequence[str] | None) -> list[HookPoint]:
    """The points with these names (all points when `names` is None); an unknown name lists the valid ones."""
    if names is None:
        return list(points)
    by_name = {p.name: p for p in points}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        ours = next((_family_of_name(p.name) for p in points if p.kind != "extra"), None)
        theirs = {_family_of_name(n) for n in unknown} - {None, ours}
        why = f" ({' and '.join(sorted(theirs))} hook point name; this model is {ours})" if theirs and ours else ""
        raise UserError(f"unknown hook point(s) {', '.join(unknown)}{why}; valid names: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def format_hook_table(points: Sequence[HookPoint]) -> str:
    """A plain-text table: name, resolution, channels, module path."""
    rows = [("name", "h x w", "channels", "module")]
    rows += [(p.name, f"{p.height}x{p.width}", str(p.channels), p.module_path) for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)


class StepTracker:
    """Counts denoising steps: step s is the denoiser call whose input is the latent after s scheduler updates.

    Also knows whether the current denoiser batch carries classifier-free guidance (`[unconditional, conditional]`)
    and the latent size of the call, so hooks can cut out the conditional half at the right resolution. Guidance is
    the pipeline's `do_classifier_free_guidance` where it has one (SD, SDXL, SD3); PixArt decides inside its
    `__call__` by `guidance_scale > 1`, so `guidance_scale` is needed there; Flux-dev has guidance distilled into the
    model (an embedding, one call per step): its whole batch is conditional.
    """

    def __init__(self, pipe, steps: Sequence[int] | None = None, guidance_scale: float | None = None) -> None:
        self.pipe = pipe
        self.denoiser = denoiser_of(pipe)
        self.steps = None if steps is None else frozenset(steps)  # the selected steps (None: all)
        self.guidance_scale = guidance_scale
        self.step = -1
        self.batch = 0  # images per denoiser call (half the denoiser batch under guidance)
        self.guided = False
        self.latent_hw = (0, 0)

    def _guided(self) -> bool:
        guided = getattr(self.pipe, "do_classifier_free_guidance", None)
        if guided is not None:
            return bool(guided)
        if type(self.pipe).__name__.startswith("PixArt"):
            return self.guidance_scale is not None and self.guidance_scale > 1
        return False

    def _before_denoiser(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.step += 1
        self.guided = self._guided()
        if self.guided and sample.shape[0] % 2:
            raise RuntimeError(f"a guidance batch of {sample.shape[0]} is not [unconditional, conditional] halves")
        self.batch = sample.shape[0] // 2 if self.guided else sample.shape[0]
        if sample.ndim == 4:  # (batch, c, h, w)
            self.latent_hw = tuple(sample.shape[-2:])
        else:  # Flux's packed tokens: the last token's (row, col) in img_ids sizes the grid of 2x2 latent patches
            _, row, col = kwargs["img_ids"].reshape(-1, 3)[-1].tolist()
            self.latent_hw = (2 * (int(row) + 1), 2 * (int(col) + 1))

    @property
    def active(self) -> bool:
        """Whether the current step is a selected one."""
        return self.steps is None or self.step in self.steps

    def halves(self, output: torch.Tensor, half: str) -> list[slice]:
        """Batch slices of `output` for the requested half: cond, uncond or both."""
        b = self.batch
        if not self.guided:
            return [slice(0, b)] if half in ("cond", "both") else []
        return {"cond": [slice(b, 2 * b)], "uncond": [slice(0, b)], "both": [slice(0, b), slice(b, 2 * b)]}[half]

    @contextmanager
    def attached(self) -> Iterator[StepTracker]:
        scheduler = self.pipe.scheduler
        original = scheduler.set_timesteps

        @functools.wraps(original)  # pipelines read its signature (Flux passes `sigmas` only if it is accepted)
        def set_timesteps(*args, **kwargs):
            self.step = -1  # a new generation starts
            return original(*args, **kwargs)

        handle = self.denoiser.register_forward_pre_hook(self._before_denoiser, with_kwargs=True)
        try:
            with patched(scheduler, "set_timesteps", set_timesteps):
                yield self
        finally:
            handle.remove()


@contextmanager
def patched(obj: object, name: str, replacement) -> Iterator[None]:
    """Shadow a method on one instance, restoring exactly what was there before (patches may nest)."""
    had_own = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, replacement)
    try:
        yield
    finally:
        if had_own:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)


def grid_size(point: HookPoint, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of `point` for a call at this latent size."""
    return tuple(level_size(side, point.level) // point.patch for side in latent_hw)


def as_spatial(tokens: torch.Tensor, point: HookPoint, latent_hw: tuple[int, int]) -> torch.Tensor:
    """`(batch, h*w, c)` tokens (row-major) -> `(batch, h, w, c)` at this call's resolution."""
    h, w = grid_size(point, latent_hw)
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


def image_tokens(output, point: HookPoint, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The `(batch, h*w, c)` image tokens in a module's output (a view: nothing is copied)."""
    if point.take == "pair_image":
        return output[1]
    if point.take == "image_tail":
        h, w = grid_size(point, latent_hw)
        return output[:, -h * w:]
    return output


def with_image_tokens(output, tokens: torch.Tensor, point: HookPoint):
    """`output` with its image tokens replaced by `tokens` (the inverse of `image_tokens`)."""
    if point.take == "pair_image":
        return (output[0], tokens, *output[2:])
    if point.take == "image_tail":
        return torch.cat([output[:, :-tokens.shape[1]], tokens], dim=1)
    return tokens


# diffusers' hooks that reuse a block's or the denoiser's output from an earlier step instead of computing it, by the
# diffusers.hooks module that defines them
STEP_CACHES = {"first_block_cache": "FirstBlockCache", "faster_cache": "FasterCache",
               "pyramid_attention_broadcast": "PyramidAttentionBroadcast", "mag_cache": "MagCache",
               "taylorseer_cache": "TaylorSeerCache", "sea_cache": "SeaCache"}


def step_caches(denoiser: torch.nn.Module) -> dict[str, str]:
    """The step-reusing caches diffusers has put on this denoiser, by `enable_cache` or the `apply_*` functions:
    {registered hook name: cache (e.g. "FirstBlockCache")}."""
    found = {}
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name, hook in getattr(registry, "hooks", {}).items():
            cache = STEP_CACHES.get(type(hook).__module__.rsplit(".", 1)[-1])
            if cache is not None:
                found[name] = cache
    return found


def refuse_step_caches(pipe) -> None:
    """Stored activations of a cached step would be those of an earlier step, and an edit would not reach it."""
    denoiser = denoiser_of(pipe)
    caches = step_caches(denoiser)
    if not caches:
        return
    attr = "pipe.transformer" if getattr(pipe, "transformer", None) is denoiser else "pipe.unet"
    if getattr(denoiser, "_cache_config", None) is not None:  # turned on by enable_cache
        fix = f"`{attr}.disable_cache()`"
    else:  # applied with diffusers.hooks.apply_*: the registry is the way back
        fix = " and ".join(f"`HookRegistry.check_if_exists_or_initialize({attr}).remove_hook({name!r}, recurse=True)`"
                           for name in sorted(caches))
    raise UserError(
        f"the denoiser has diffusers step caching on ({', '.join(sorted(set(caches.values())))}): cached steps reuse "
        f"earlier steps' outputs, so captured activations would be stale and edits would miss them; turn it off "
        f"with {fix} before capturing or editing"
    )


@contextmanager
def hooked(
    model,
    fn: HookFn,
    hooks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    half: str = "cond",
    write: bool = False,
) -> Iterator[StepTracker]:
    """Call `fn(step, name, act)` at the denoiser hook points `hooks` (None: all) during generations run inside the block.

    model: a `LoadedModel` (U-Net or transformer). steps: only these steps (None: all). half: "cond", "uncond" or
    "both" (each half is passed to `fn` separately; a model without a guidance batch has only "cond"). write: replace
    each half with the tensor `fn` returns (None leaves it); without it, what `fn` returns is ignored and the generation
    is untouched. Hooks run in forward order, and after hooks entered earlier on the same module, so later readers see
    earlier writes. Refuses a denoiser with diffusers' step caching on. Yields the step tracker, for hooks that are
    not denoiser modules.
    """
    if half not in HALVES:
        raise UserError(f"unknown half {half!r}; choose one of {', '.join(HALVES)}")
    points = select_hook_points([p for p in model.hook_points if p.kind != "extra"], hooks)
    refuse_step_caches(model.pipe)
    tracker = StepTracker(model.pipe, steps, guidance_scale=model.config.guidance_scale)

    def attach(point: HookPoint):
        def hook(module, inputs, output):
            if not tracker.active:
                return None  # outside the selected steps a hook costs nothing: no slicing, no copy
            tokens = image_tokens(output, point, tracker.latent_hw)  # (batch, h*w, c)
            edited = None
            for part in tracker.halves(tokens, half):
                # a reader's view is detached so what it keeps holds no graph; a writer's stays differentiable
                act = as_spatial(tokens[part] if write else tokens[part].detach(), point, tracker.latent_hw)
                new = fn(tracker.step, point.name, act)
                if not write or new is None:
                    continue
                if new.shape != act.shape:
                    raise ValueError(f"edit for {point.name} returned shape {tuple(new.shape)}, expected {tuple(act.shape)}")
                if edited is None:
                    edited = tokens.clone()  # copy on first write: later halves still read the module's own output
                edited[part] = new.reshape(tokens[part].shape).to(tokens.dtype)
            return None if edited is None else with_image_tokens(output, edited, point)  # None: output as it is

        return tracker.denoiser.get_submodule(point.module_path).register_forward_hook(hook)

    with ExitStack() as stack:
        stack.enter_context(tracker.attached())
        for point in points:
            stack.callback(attach(point).remove)
        yield tracker
