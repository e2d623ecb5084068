"""Run shards on Ray: one generator actor per GPU (or per CPU slot), a shared work queue, retries on other actors.

The actor is a thin wrapper: it loads the model once and calls `workflows.generate.generate_shard` for each shard it is
given. The driver keeps the queue and hands the next shard to whichever actor is idle, so fast actors take more work.
A shard whose actor dies (a SIGKILL, an OOM, a lost node) or raises is put back at the front of the queue, preferring an
actor that has not failed it yet, until it has used `1 + max_retries` attempts; then it is reported failed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable

import ray

from ldm.errors import UserError
from workflows.config import RunConfig, from_dict, to_dict
from workflows.generate import Shard, describe, generate_shard, load
from workflows.store import Layout, ShardWriter


PROBE_SECONDS = 0.5  # how often a restarting actor is asked whether it is back


class GeneratorActor:
    """Holds one loaded pipeline and one store writer for the actor's lifetime.

    A user's mistake found while loading (a model not in this node's cache) is kept and raised by the first call, so
    it reaches the driver as a task error carrying the UserError (one `error:` line there), not as a dead actor."""

    def __init__(self, cfg: dict, cpu_threads: int | None):
        import torch

        if cpu_threads:
            # Fixed thread count on CPU actors: results then do not depend on which actor ran a shard.
            torch.set_num_threads(cpu_threads)
        self.cfg = from_dict(cfg)
        self.load_error: UserError | None = None
        try:
            self.model = load(self.cfg, device="auto")
        except UserError as err:
            self.load_error = err
        self.writer: ShardWriter | None = None

    def describe(self) -> dict:
        if self.load_error:
            raise self.load_error
        return describe(self.model, self.cfg).to_json()

    def run_shard(self, shard: dict, attempt: int) -> dict:
        if self.load_error:
            raise self.load_error
        if self.writer is None:  # the store exists only once the driver has created it from describe()
            self.writer = ShardWriter(self.cfg.output)
        node = ray.get_runtime_context().get_node_id()
        return generate_shard(self.model, self.cfg, Shard(**shard), self.writer, attempt, info={"node": node})

    def pid(self) -> int:
        return os.getpid()


def actor_plan(cfg: RunConfig) -> tuple[int, dict]:
    """(number of actors, Ray resource options per actor) for the cluster we are connected to."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus > 0:
        n = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        return n, {"num_gpus": cfg.gpus_per_actor, "num_cpus": cfg.cpus_per_actor}
    n = cfg.actors or max(1, int(resources.get("CPU", 1) // cfg.cpus_per_actor))
    return n, {"num_gpus": 0, "num_cpus": cfg.cpus_per_actor}


def start_actors(cfg: RunConfig, max_actors: int | None = None) -> list:
    n, options = actor_plan(cfg)
    if max_actors is not None:
        n = max(1, min(n, max_actors))
    cpu_threads = None if options["num_gpus"] else cfg.cpus_per_actor
    # max_restarts: a killed actor comes back (reloading the model); its shard is retried by the driver.
    remote = ray.remote(GeneratorActor).options(max_restarts=-1, max_task_retries=0, **options)
    return [remote.remote(to_dict(cfg), cpu_threads) for _ in range(n)]


def describe_on(actor) -> Layout:
    return Layout.from_json(ray.get(actor.describe.remote()))


def _error_text(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


def run_shards(
    cfg: RunConfig,
    actors: list,
    shards: list[Shard],
    on_done: Callable[[Shard, dict], None],
    on_failed: Callable[[Shard, str], None],
    on_tick: Callable[[], None] = lambda: None,
    tick_seconds: float = 1.0,
) -> list[Shard]:
    """Generate `shards` on `actors`; return the shards that were never attempted (all actors lost), normally [].

    `on_done(shard, record)` runs after a shard's completion record exists; `on_failed(shard, error)` after its last
    attempt failed. Both run in the driver, one at a time.
    """
    queue = deque(shards)
    attempts = {s.index: 0 for s in shards}
    failed_on: dict[int, set[int]] = {s.index: set() for s in shards}
    streak = [0] * len(actors)  # consecutive failures per actor: a broken actor (e.g. its model cannot load) is dropped
    idle = deque(range(len(actors)))
    recovering: dict[int, float] = {}  # actor -> time of its next readiness probe (it is being restarted by Ray)
    running: dict = {}  # ref -> (actor, shard), or (actor, None) for a readiness probe

    def take(actor: int) -> Shard:
        for shard in queue:  # first shard this actor has not failed yet; else the head (e.g. a single actor)
            if actor not in failed_on[shard.index]:
                queue.remove(shard)
                return shard
        return queue.popleft()

    while queue or any(shard for _, shard in running.values()):
        while idle and queue:
            a = idle.popleft()
            shard = take(a)
            running[actors[a].run_shard.remote(dataclasses.asdict(shard), attempts[shard.index])] = (a, shard)
        now = time.monotonic()
        for a, when in list(recovering.items()):
            if when <= now:  # calls to a restarting actor fail at once; probe it until it answers
                del recovering[a]
                running[actors[a].pid.remote()] = (a, None)
        if not running and not recovering:
            break  # work left but no actor alive
        ready, _ = ray.wait(list(running), num_returns=1, timeout=PROBE_SECONDS if recovering else tick_seconds)
        on_tick()
        for ref in ready:
            a, shard = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.ActorDiedError as err:  # gone for good: its constructor failed, or it was killed
                if shard is not None:
                    _shard_failed(cfg, shard, a, err, attempts, failed_on, queue, on_failed)
                ray.kill(actors[a])
                continue
            except ray.exceptions.RayActorError as err:  # the process died; Ray restarts it
                if shard is not None:
                    _shard_failed(cfg, shard, a, err, attempts, failed_on, queue, on_failed)
                    streak[a] += 1
                recovering[a] = time.monotonic() + PROBE_SECONDS
                continue
            except (ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError) as err:  # generate_shard raised
                if isinstance(getattr(err, "cause", None), UserError):
                    raise err.cause from None  # the user's to fix; no retry can help
                _shard_failed(cfg, shard, a, err, attempts, failed_on, queue, on_failed)
                streak[a] += 1
                if streak[a] > cfg.max_retries + 1:
                    ray.kill(actors[a])  # it fails whatever it is given: stop feeding it work
                else:
                    idle.append(a)
                continue
            if shard is not None:
                streak[a] = 0
                on_done(shard, result)
            idle.append(a)
    return list(queue)


def _shard_failed(cfg, shard, actor, err, attempts, failed_on, queue, on_failed) -> None:
    attempts[shard.index] += 1
    failed_on[shard.index].add(actor)
    if attempts[shard.index] > cfg.max_retries:
        on_failed(shard, _error_text(err))
    else:
        queue.appendleft(shard)
