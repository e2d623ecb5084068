"""The patching map on Ray: patching actors (the run's pipeline and saliency labeler each) on the one actor pool that
generation and the edits use. The actor is a thin shell over `workflows.stages.patching.run_pair`; `pair_runner` is
the stage's runner (`workflows.stages.patching_stage.run_patching(run_pairs=...)`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from workflows.config import InterventionConfig
from workflows.ray.pool import keyed_runner
from workflows.stages.patching import Pair, run_pair
from workflows.stages.patching_stage import PairRunner, gather_pairs, make_worker


class PatchingActor:
    """Holds the pipeline and the labeler for the actor's lifetime; reads what it needs from the store itself, so a
    restarted actor needs nothing from the driver."""

    def __init__(self, output: str, cfg: dict, labeler_specs: Mapping[str, dict] | None,
                 labelers: Mapping[str, Callable] | None, cpu_threads: int | None):
        import torch

        if cpu_threads:  # a fixed thread count: results do not depend on which actor ran a pair
            torch.set_num_threads(cpu_threads)
        config = InterventionConfig(**cfg)
        self.worker = make_worker(output, config, gather_pairs(output, config), labelers=labelers,
                                  labeler_specs=labeler_specs)

    def run(self, pair: Pair, attempt: int) -> dict:
        return run_pair(self.worker, pair)

    def pid(self) -> int:
        return os.getpid()


def pair_runner(output: str, cfg: InterventionConfig, *, labeler_specs: Mapping[str, dict] | None = None,
                labelers: Mapping[str, Callable] | None = None, address: str | None = None) -> PairRunner:
    """Run patching pairs on a pool of patching actors (one per GPU, or per `cpus_per_actor` CPUs)."""
    # the config is read when the pool starts: the calibration sets its chosen strengths after the runner is made
    return keyed_runner(PatchingActor, lambda threads: (output, dataclasses.asdict(cfg), labeler_specs, labelers, threads),
                        cfg, address)
