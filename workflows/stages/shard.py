"""Generate one work shard: images plus every captured activation, streamed straight into the store.

Plain functions, no Ray: `workflows.ray.generate` runs `generate_shard` inside actors, and
`workflows.stages.generate.local_runner` runs a whole run in this process (tests, debugging, one machine without Ray).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from workflows.config import ConfigError, RunConfig
from workflows.stages.image_source import is_image_source, shard_images
from workflows.store import Plan
from workflows.store import Layout, ShardWriter, shard_ranges


@dataclass
class Shard:
    """A fixed set of consecutive images [start, stop): the unit of scheduling, retry and resume."""

    index: int
    start: int
    stop: int
    prompts: list[str]
    seeds: list[int]


def make_shards(plan: Plan, shard_size: int) -> list[Shard]:
    return [Shard(k, a, b, plan.prompts[a:b], plan.seeds[a:b]) for k, (a, b) in enumerate(shard_ranges(len(plan), shard_size))]


def backend(cfg: RunConfig):
    """The module providing the ldm API (`load_model`, `capture`): `ldm` unless the config names another."""
    if cfg.backend == "ldm":
        from ldm.capture import capture
        from ldm.loading import load_model

        return load_model, capture
    module = importlib.import_module(cfg.backend)
    return module.load_model, module.capture


def load(cfg: RunConfig, device: str = "auto"):
    """Load the run's model once (an actor keeps it for every shard it generates)."""
    load_model, _ = backend(cfg)
    extra = {} if cfg.permute_seed is None else {"permute_seed": cfg.permute_seed}
    return load_model(cfg.model, scheduler=cfg.scheduler, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                      dtype=cfg.dtype, device=device, height=cfg.height, width=cfg.width, **extra)


def describe(model, cfg: RunConfig) -> Layout:
    """Per-image shapes of what the run records, from the model's hook points; unknown names list the valid ones."""
    points = {p.name: p for p in model.hook_points}
    unet = [n for n, p in points.items() if getattr(p, "kind", "unet") != "extra"]  # the denoiser's: U-Net or DiT
    wanted = unet if cfg.hooks is None else list(cfg.hooks)
    unknown = [n for n in wanted if n not in unet]
    if unknown:
        raise ConfigError(f"hooks: unknown hook point(s) {', '.join(unknown)}; valid names: {', '.join(unet)}")
    missing = [n for n in cfg.extras if n not in points]
    if missing:
        raise ConfigError(f"extras {', '.join(missing)} are not provided by this model")
    acts = {n: (points[n].height, points[n].width, points[n].channels) for n in wanted + list(cfg.extras)}
    return Layout(acts=acts, image=tuple(model.image_size), steps=cfg.steps)


def generate_shard(model, cfg: RunConfig, shard: Shard, writer: ShardWriter, attempt: int = 0,
                   info: dict | None = None) -> dict:
    """Generate `shard` and write it; returns the completion record (plus `info`), which is written last.

    The sink hands each `(batch, h, w, c)` activation to the writer, which copies it into the batch buffer as it is
    produced (asynchronously from a GPU); the finished batch is written by the writer's threads while the next batch
    runs (see `ShardWriter`). Batches are fixed slices of the shard, so a regenerated shard repeats exactly the same
    computations as the first attempt. On an image-source run the batch's given images are run through the
    noised-image protocol (`ldm.noised.noised_pass`) instead, and written to `images` like generated ones.
    """
    _, capture = backend(cfg)
    hooks = None if cfg.hooks is None else list(cfg.hooks)
    t0 = time.perf_counter()
    writer.begin()
    image_sha = []
    given = is_image_source(cfg)
    if given:
        from ldm.noised import noised_pass
    for a in range(shard.start, shard.stop, cfg.batch_size):
        b = min(a + cfg.batch_size, shard.stop)

        def sink(step: int, name: str, act, a=a) -> None:
            writer.write_act(name, a, step, act)

        prompts, seeds = shard.prompts[a - shard.start:b - shard.start], shard.seeds[a - shard.start:b - shard.start]
        with capture(model, sink, hooks=hooks, extras=tuple(cfg.extras)):
            if given:
                images = shard_images(cfg.output, a, b)  # (batch, H, W, 3) uint8, staged by the generate stage
                noised_pass(model, images, prompts, seeds)
            else:
                images = model.generate(prompts, seeds)
        writer.end_batch()
        writer.write_images(a, images)
        image_sha += [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]
    record = {
        "shard": shard.index, "start": shard.start, "stop": shard.stop, "status": "complete", "attempt": attempt,
        "seconds": round(time.perf_counter() - t0, 3), "host": socket.gethostname(), "pid": os.getpid(),
        "image_sha256": image_sha, **(info or {}),
    }
    writer.complete(shard.index, record)
    return record
