"""Run intervention units on Ray: one actor per GPU (or per `cpus_per_actor` CPUs), a shared queue, retries.

The actor is a thin wrapper: it loads the run's model and the labelers once, holds the probes, and calls
`workflows.interventions.run_unit` for each unit it is handed (edited images go straight into the store). The driver
keeps the queue, gives the next unit to whichever actor is idle, and writes each unit's record when it returns.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Mapping

import ray

from workflows.generate import load
from workflows.ray_session import ensure_ray
from workflows.interventions import (
    InterventionConfig,
    Unit,
    Worker,
    gather_inputs,
    load_labelers,
    run_unit,
    store_sink,
)
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
        config = InterventionConfig(**cfg)
        inputs = gather_inputs(output, config)
        model = load(load_run_config(output), device="auto")
        labelers = labelers or load_labelers(output, config.tasks, labeler_specs, device=str(model.device))
        self.worker = Worker(model, inputs.probes, dict(labelers), inputs.scaler, config, inputs.hooks,
                             store_sink(output))

    def run(self, unit: Unit) -> list[dict]:
        return run_unit(self.worker, unit)

    def pid(self) -> int:
        return os.getpid()


def pool_size(cfg: InterventionConfig, n_units: int) -> tuple[int, dict]:
    """(number of actors, Ray resource options per actor) on the connected cluster."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus > 0:
        n, options = int(gpus // cfg.gpus_per_actor), {"num_gpus": cfg.gpus_per_actor, "num_cpus": cfg.cpus_per_actor}
    else:
        n, options = int(resources.get("CPU", 1) // cfg.cpus_per_actor), {"num_gpus": 0, "num_cpus": cfg.cpus_per_actor}
    n = cfg.actors or n
    return max(1, min(n, n_units)), options


def run_pool(
    output: str,
    cfg: InterventionConfig,
    units: list[Unit],
    on_done: Callable[[Unit, list[dict]], None],
    on_failed: Callable[[Unit, str], None],
    *,
    labeler_specs: Mapping[str, dict] | None = None,
    labelers: Mapping[str, Callable] | None = None,
    address: str | None = None,
) -> None:
    """Run `units` on an actor pool; `on_done(unit, rows)` / `on_failed(unit, error)` run in the driver.

    A unit whose actor raises or dies is queued again (actors restart) until it has failed `1 + max_retries` times."""
    ensure_ray(address)
    n, options = pool_size(cfg, len(units))
    cpu_threads = None if options["num_gpus"] else cfg.cpus_per_actor
    remote = ray.remote(InterventionActor).options(max_restarts=-1, max_task_retries=0, **options)
    config = dataclasses.asdict(cfg)
    actors = [remote.remote(output, config, labeler_specs, labelers, cpu_threads) for _ in range(n)]
    queue, idle, running = deque(units), deque(range(n)), {}
    failures: dict[str, int] = {}
    try:
        while queue or running:
            while idle and queue:
                a, unit = idle.popleft(), queue.popleft()
                running[actors[a].run.remote(unit)] = (a, unit)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                a, unit = running.pop(ref)
                idle.append(a)
                try:
                    rows = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                    failures[unit.key] = failures.get(unit.key, 0) + 1
                    if failures[unit.key] > cfg.max_retries:
                        on_failed(unit, f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}")
                    else:
                        queue.appendleft(unit)
                    continue
                on_done(unit, rows)
    finally:
        for actor in actors:
            ray.kill(actor)


def _animate(output: str, cfg: dict, cpu_threads: int | None) -> None:
    import torch

    from workflows.animate import animate_run

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    animate_run(output, cfg=InterventionConfig(**cfg))


def animate_on_ray(output: str, cfg: InterventionConfig, address: str | None = None) -> None:
    """The moving-object GIF (`workflows.animate.animate_run`) as one Ray task with an actor's resources, so it
    renders on a GPU where the cluster has one rather than in the driver."""
    ensure_ray(address)
    _, options = pool_size(cfg, 1)
    cpu_threads = None if options["num_gpus"] else cfg.cpus_per_actor
    ray.get(ray.remote(**options)(_animate).remote(output, dataclasses.asdict(cfg), cpu_threads))
