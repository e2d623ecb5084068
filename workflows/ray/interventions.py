"""Interventions on Ray: intervention actors (the run's pipeline, the probes and the labelers each) on the one actor
pool, and the moving-object GIF as one task with an actor's resources.

The actor is a thin shell over `workflows.stages.edit_units.run_unit`; `unit_runner` is the stage's runner
(`workflows.stages.interventions.run_interventions(run_units=...)`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

import ray

from workflows.config import InterventionConfig
from workflows.ray.pool import keyed_runner, pool_size
from workflows.ray.session import ensure_ray
from workflows.stages.edit_units import (Unit, Worker, colour_check_for, gather_inputs, load_labelers, run_unit,
                                         store_sink)
from workflows.stages.causal import resolve_causal
from workflows.stages.interventions import UnitRunner
from workflows.stages.shard import load
from workflows.store import load_run_config


class InterventionActor:
    """Holds the pipeline, the probes and the labelers for the actor's lifetime.

    It reads the probes from the store itself, like the model: a restarted actor then needs nothing from the driver's
    object store (Ray warns that constructor arguments held there may be gone when an actor restarts)."""

    def __init__(self, output: str, cfg: dict, labeler_specs: Mapping[str, dict] | None,
                 labelers: Mapping[str, Callable] | None, cpu_threads: int | None):
        import torch

        if cpu_threads:  # a fixed thread count: results do not depend on which actor ran a unit
            torch.set_num_threads(cpu_threads)
        config = resolve_causal(output, InterventionConfig(**cfg))  # `hooks: causal`: the map's layers and steps
        inputs = gather_inputs(output, config)
        model = load(load_run_config(output), device="auto")
        labelers = labelers or load_labelers(output, config.tasks, labeler_specs, device=str(model.device))
        self.worker = Worker(model, inputs.probes, dict(labelers), inputs.scaler, config, inputs.hooks,
                             store_sink(output), colour_check_for(model))

    def run(self, unit: Unit, attempt: int) -> list[dict]:
        return run_unit(self.worker, unit)

    def pid(self) -> int:
        return os.getpid()


def unit_runner(output: str, cfg: InterventionConfig, *, labeler_specs: Mapping[str, dict] | None = None,
                labelers: Mapping[str, Callable] | None = None, address: str | None = None) -> UnitRunner:
    """Run intervention units on a pool of intervention actors (one per GPU, or per `cpus_per_actor` CPUs)."""
    # the config is read when the pool starts: the calibration sets its chosen strengths after the runner is made
    return keyed_runner(InterventionActor, lambda threads: (output, dataclasses.asdict(cfg), labeler_specs, labelers, threads),
                        cfg, address)


def _animate(output: str, cfg: dict, cpu_threads: int | None) -> None:
    import torch

    from workflows.stages.animate import animate_run

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    animate_run(output, cfg=InterventionConfig(**cfg))


def animate_on_ray(output: str, cfg: InterventionConfig, address: str | None = None) -> None:
    """The moving-object GIF (`workflows.stages.animate.animate_run`) as one Ray task with an actor's resources, so it
    renders on a GPU where the cluster has one rather than in the driver."""
    ensure_ray(address)
    _, options = pool_size(cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, 1)
    cpu_threads = None if options["num_gpus"] else cfg.cpus_per_actor
    ray.get(ray.remote(**options)(_animate).remote(output, dataclasses.asdict(cfg), cpu_threads))
