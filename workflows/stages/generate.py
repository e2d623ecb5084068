"""The generate stage: every image of the run that is not complete yet, shard by shard, into the store; and the
control variants (the permuted-weights U-Net), which are runs of their own under `variants/`.

A new run refuses an output holding another run; `resume` regenerates exactly the missing and failed shards, with the
stored plan (its items and splits never change on resume). The shards are executed by a runner that is passed in:
`local_runner` (this process, one shard after another) or `workflows.ray.generate.shard_runner` (an actor pool).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from ldm.errors import UserError
from workflows.config import ConfigError, RunConfig
from workflows.stages.image_source import is_image_source, run_plan, stage_inputs, staged
from workflows.stages.progress import Progress
from workflows.stages.shard import Shard, describe, generate_shard, load, make_shards
from workflows.store import (Layout, ShardWriter, bytes_on_disk, check_output, completion_records, create_store,
                             load_layout, load_plan, mark_failed, stored_config, write_manifest)
from workflows.store.act_dtype import check_act_dtype
from workflows.store.paths import variant_output

MANIFEST_EVERY = 5.0  # seconds between manifest rewrites while running (it is rewritten once more at the end)

# run_shards(todo, on_layout, on_done, on_failed, on_tick) -> shards never attempted (every worker lost), normally [].
# It loads the model(s), calls on_layout(layout) once before any shard is written, then reports each shard.
ShardRunner = Callable[..., list[Shard]]


@dataclass
class Result:
    images: int  # generated in this session
    complete: int  # images complete in the store, this session or earlier
    total: int
    failed_shards: list[int] = field(default_factory=list)
    pending_shards: list[int] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.complete == self.total


def generate(cfg: RunConfig, resume: bool = False, run_shards: ShardRunner | None = None,
             stream: TextIO | None = None) -> Result:
    """Generate every image of the run that is not complete yet (see the module docstring); default runner: local."""
    stream = stream or sys.stderr
    resumed = check_output(cfg, resume)
    plan = load_plan(cfg.output) if resumed else run_plan(cfg)  # a resumed run keeps its stored items and splits
    shards = make_shards(plan, cfg.shard_size)
    done = completion_records(cfg.output) if resumed else {}
    todo = [s for s in shards if s.index not in done]
    failed: set[int] = set()
    progress = Progress(total=len(plan), already=sum(s.stop - s.start for s in shards if s.index in done),
                        every=cfg.progress_every, stream=stream)
    last_manifest = [time.monotonic()]

    def on_layout(layout: Layout) -> None:
        if resumed:
            load_layout(cfg.output)  # fails early on a store that is not ours
        else:
            create_store(cfg, plan, layout)
        if is_image_source(cfg) and staged(cfg.output) is None:  # the given images (and truth), before any shard
            stage_inputs(cfg, plan, layout.image)

    def on_done(shard: Shard, record: dict) -> None:
        done[shard.index] = record
        failed.discard(shard.index)
        progress.update(done=shard.stop - shard.start)
        if time.monotonic() - last_manifest[0] > MANIFEST_EVERY:
            write_manifest(cfg.output, plan, cfg.shard_size, done, failed)
            last_manifest[0] = time.monotonic()

    def on_failed(shard: Shard, error: str) -> None:
        failed.add(shard.index)
        mark_failed(cfg.output, shard.index, {"shard": shard.index, "status": "failed", "error": error})
        print(f"shard {shard.index} (images {shard.start}-{shard.stop - 1}) failed: {error}", file=stream, flush=True)
        progress.update(failed=shard.stop - shard.start)

    print(f"{'resuming' if resumed else 'starting'} run {cfg.output}: {len(plan)} images "
          f"({plan.count('train')} train, {plan.count('test')} test) in {len(shards)} shards, "
          f"{len(todo)} to generate", file=stream, flush=True)
    left: list[Shard] = []
    if todo or not resumed:
        left = (run_shards or local_runner(cfg))(todo, on_layout, on_done, on_failed, progress.update)
    write_manifest(cfg.output, plan, cfg.shard_size, done, failed)
    progress.update(force=True)
    result = Result(images=progress.done, complete=sum(s.stop - s.start for s in shards if s.index in done),
                    total=len(plan), failed_shards=sorted(failed), pending_shards=sorted(s.index for s in left),
                    bytes_written=bytes_on_disk(cfg.output), seconds=time.monotonic() - progress.start)
    print(progress.summary(result.bytes_written, result.failed_shards, result.pending_shards), file=stream, flush=True)
    return result


def local_runner(cfg: RunConfig, device: str = "auto") -> ShardRunner:
    """The run in this process, one shard after another (tests, debugging, no Ray); a failing shard is retried
    `max_retries` times, then reported."""

    def run(todo, on_layout, on_done, on_failed, on_tick) -> list[Shard]:
        model = load(cfg, device=device)
        on_layout(describe(model, cfg))
        with ShardWriter(cfg.output) as writer:
            for shard in todo:
                for attempt in range(cfg.max_retries + 1):
                    try:
                        on_done(shard, generate_shard(model, cfg, shard, writer, attempt))
                        break
                    except UserError:
                        raise  # the user's to fix: no retry can help
                    except (OSError, RuntimeError, ValueError) as err:  # CUDA OOM, ...: retry, then report
                        # (a full disk arrives as a UserError: DiskFullError)
                        if attempt == cfg.max_retries:
                            on_failed(shard, f"{type(err).__name__}: {err}")
        return []

    return run


def check_inputs(cfg: RunConfig, in_ray_job: bool = False) -> None:
    """Refuse before anything starts what can be checked cheaply here. (A hub id is only checked where the model is
    loaded: on a cluster the weights may be on the GPU nodes and not on the driver's.)"""
    if cfg.backend == "ldm":
        from ldm.architecture import native_scheduler
        from ldm.loading import check_options, check_scheduler_class

        check_options(cfg.model, cfg.scheduler, cfg.dtype)
        native = native_scheduler(cfg.model)  # e.g. LMS on a flow-matching model is refused here, not in an actor
        if native is not None:
            check_scheduler_class(native, cfg.scheduler)
    check_act_dtype(cfg.act_dtype)
    if in_ray_job and "://" not in cfg.output and not os.path.isabs(cfg.output):
        raise ConfigError(f"output {cfg.output!r} is relative: inside `ray job submit` it would land in the job's "
                          "temporary working directory. Give an absolute path or a URL, e.g. --output $PWD/runs/toy")


def control_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The run config of each control model variant: same plan and seeds, its own store under variants/."""
    out = {}
    for variant in cfg.probes.controls:
        if variant == "permuted":
            out[variant] = dataclasses.replace(cfg, output=variant_output(cfg.output, variant),
                                               permute_seed=cfg.probes.permute_seed)
    return out


def generate_controls(cfg: RunConfig, runner: Callable[[RunConfig], ShardRunner] = local_runner,
                      stream: TextIO | None = None) -> dict[str, Result]:
    """Generate every control variant's activations (resuming any that were started), each with `runner(its cfg)`."""
    results = {}
    for variant, variant_cfg in control_configs(cfg).items():
        print(f"control {variant}: generating into {variant_cfg.output}", file=stream or sys.stderr, flush=True)
        started = stored_config(variant_cfg.output) is not None
        results[variant] = generate(variant_cfg, resume=started, run_shards=runner(variant_cfg), stream=stream)
    return results
