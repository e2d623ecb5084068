"""Generation on Ray: generator actors (one loaded pipeline and one store writer each) on the one actor pool.

The actor is a thin shell over `workflows.stages.shard.generate_shard`; `shard_runner` is the generate stage's runner
(`workflows.stages.generate.generate(run_shards=...)`).
"""

from __future__ import annotations

import os

import ray

from ldm.errors import UserError
from workflows.config import RunConfig, from_dict, to_dict
from workflows.ray.pool import ActorPool, pool_size
from workflows.ray.session import ensure_ray
from workflows.stages.generate import ShardRunner
from workflows.stages.shard import Shard, describe, generate_shard, load
from workflows.store import Layout, ShardWriter


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

    def run_shard(self, shard: Shard, attempt: int) -> dict:
        if self.load_error:
            raise self.load_error
        if self.writer is None:  # the store exists only once the driver has created it from describe()
            self.writer = ShardWriter(self.cfg.output)
        node = ray.get_runtime_context().get_node_id()
        return generate_shard(self.model, self.cfg, shard, self.writer, attempt, info={"node": node})

    def pid(self) -> int:
        return os.getpid()


def shard_runner(cfg: RunConfig, address: str | None = None) -> ShardRunner:
    """Run shards on a pool of generator actors (one per GPU, or per `cpus_per_actor` CPUs)."""

    def run(todo: list[Shard], on_layout, on_done, on_failed, on_tick) -> list[Shard]:
        ensure_ray(address)
        n, options = pool_size(cfg.actors, cfg.gpus_per_actor, cfg.cpus_per_actor, len(todo))
        cpu_threads = None if options["num_gpus"] else cfg.cpus_per_actor
        with ActorPool(GeneratorActor, (to_dict(cfg), cpu_threads), n, options) as pool:
            on_layout(Layout.from_json(ray.get(pool.actors[0].describe.remote())))
            return pool.run(todo, lambda actor, shard, attempt: actor.run_shard.remote(shard, attempt),
                            key=lambda shard: shard.index, max_retries=cfg.max_retries, on_done=on_done,
                            on_failed=on_failed, on_tick=on_tick)

    return run
