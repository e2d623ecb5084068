"""Hook points: every U-Net self-attention output, named by its position, plus the paper's extra pseudo-layers.

A hook point is the output projection of a transformer block's `attn1` (`...attn1.to_out.0`, bias included), i.e. the
self-attention output before the residual add, as probed in the paper. Names come from the position in the U-Net:
`down_{block}_{attention}`, `mid_{attention}`, `up_{block}_{attention}`, with `_t{k}` appended when a block stacks several
transformer layers (SDXL). For SD v1 that is `down_0_0 ... down_2_1, mid_0, up_1_0 ... up_3_2`, 16 in all.

`hooked` is the one hook mechanism behind both `ldm.capture` (read) and `ldm.edit` (write): the user names hook points
and steps, and a function `fn(step, name, act)` sees each activation as `(batch, h, w, c)`, one guidance half at a time;
when writing, what it returns replaces that half.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class HookPoint:
    """One probe-able activation. `level` counts the downsamplings between the latent and this layer."""

    name: str
    module_path: str  # dotted path inside the U-Net (or the pipeline, for extras)
    height: int
    width: int
    channels: int
    level: int = 0
    kind: str = "unet"  # "unet" or "extra"


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


def find_hook_points(pipe, latent_height: int, latent_width: int) -> list[HookPoint]:
    """U-Net hook points followed by the extra pseudo-layers (`EXTRAS`)."""
    points = find_unet_hook_points(pipe.unet, latent_height, latent_width)
    latent_channels = pipe.unet.config.in_channels
    vae_channels = pipe.vae.config.block_out_channels[-1]
    extra = [
        HookPoint("vae_mid", "vae.decoder.mid_block.attentions.0.to_out.0", latent_height, latent_width, vae_channels),
        HookPoint("latent", "scheduler.step(sample)", latent_height, latent_width, latent_channels),
        HookPoint("x0", "scheduler.step(pred_original_sample)", latent_height, latent_width, latent_channels),
    ]
    return points + [HookPoint(**{**p.__dict__, "kind": "extra"}) for p in extra]


def select_hook_points(points: Sequence[HookPoint], names: Sequence[str] | None) -> list[HookPoint]:
    """The points with these names (all points when `names` is None); an unknown name lists the valid ones."""
    if names is None:
        return list(points)
    by_name = {p.name: p for p in points}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(f"unknown hook point(s) {', '.join(unknown)}; valid names: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def format_hook_table(points: Sequence[HookPoint]) -> str:
    """A plain-text table: name, resolution, channels, module path."""
    rows = [("name", "h x w", "channels", "module")]
    rows += [(p.name, f"{p.height}x{p.width}", str(p.channels), p.module_path) for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)


class StepTracker:
    """Counts denoising steps: step s is the U-Net call whose input is the latent after s scheduler updates.

    Also knows whether the current U-Net batch carries classifier-free guidance (`[unconditional, conditional]`)
    and the latent size of the call, so hooks can cut out the conditional half at the right resolution.
    """

    def __init__(self, pipe, steps: Sequence[int] | None = None) -> None:
        self.pipe = pipe
        self.steps = None if steps is None else frozenset(steps)  # the selected steps (None: all)
        self.step = -1
        self.batch = 0  # images per U-Net call (half the U-Net batch under guidance)
        self.guided = False
        self.latent_hw = (0, 0)

    def _before_unet(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.step += 1
        self.guided = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        self.batch = sample.shape[0] // 2 if self.guided else sample.shape[0]
        self.latent_hw = tuple(sample.shape[-2:])

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

        def set_timesteps(*args, **kwargs):
            self.step = -1  # a new generation starts
            return original(*args, **kwargs)

        handle = self.pipe.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
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


def as_spatial(tokens: torch.Tensor, point: HookPoint, latent_hw: tuple[int, int]) -> torch.Tensor:
    """`(batch, h*w, c)` tokens (row-major) -> `(batch, h, w, c)` at this call's resolution."""
    h, w = level_size(latent_hw[0], point.level), level_size(latent_hw[1], point.level)
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])


@contextmanager
def hooked(
    model,
    fn: HookFn,
    hooks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    half: str = "cond",
    write: bool = False,
) -> Iterator[StepTracker]:
    """Call `fn(step, name, act)` at the U-Net hook points `hooks` (None: all) during generations run inside the block.

    model: a `LoadedModel`. steps: only these steps (None: all). half: "cond", "uncond" or "both" (each half is passed
    to `fn` separately). write: replace each half with the tensor `fn` returns (None leaves it); without it, what `fn`
    returns is ignored and the generation is untouched. Hooks run in forward order, and after hooks entered earlier on
    the same module, so later readers see earlier writes. Yields the step tracker, for hooks that are not U-Net modules.
    """
    if half not in HALVES:
        raise UserError(f"unknown half {half!r}; choose one of {', '.join(HALVES)}")
    points = select_hook_points([p for p in model.hook_points if p.kind == "unet"], hooks)
    tracker = StepTracker(model.pipe, steps)

    def attach(point: HookPoint):
        def hook(module, inputs, output: torch.Tensor) -> torch.Tensor | None:
            if not tracker.active:
                return None  # outside the selected steps a hook costs nothing: no slicing, no copy
            edited = None
            for part in tracker.halves(output, half):
                # a reader's view is detached so what it keeps holds no graph; a writer's stays differentiable
                act = as_spatial(output[part] if write else output[part].detach(), point, tracker.latent_hw)
                new = fn(tracker.step, point.name, act)
                if not write or new is None:
                    continue
                if new.shape != act.shape:
                    raise ValueError(f"edit for {point.name} returned shape {tuple(new.shape)}, expected {tuple(act.shape)}")
                if edited is None:
                    edited = output.clone()  # copy on first write: later halves still read the module's own output
                edited[part] = new.reshape(output[part].shape).to(output.dtype)
            return edited  # None keeps the module's output as it is

        return model.pipe.unet.get_submodule(point.module_path).register_forward_hook(hook)

    with ExitStack() as stack:
        stack.enter_context(tracker.attached())
        for point in points:
            stack.callback(attach(point).remove)
        yield tracker
