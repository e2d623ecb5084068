"""Ray fan-out for the label stage and the probe grid: thin wrappers around `workflows.stages.labels` and `workflows.stages.grid`."""

from __future__ import annotations

from collections.abc import Iterator

import ray

from ldm.labelers import Labeler
from workflows.config import RunConfig
from workflows.stages.grid import FitMany, ProbeGroup, fit_group
from workflows.stages.grid_data import GridData
from workflows.stages.labels import LabelRunner, label_shards, labeler_spec, load_labeler

_LABELERS: dict[tuple, Labeler] = {}  # one loaded labeler per worker process and spec


def _labeler(target: str, spec: dict) -> Labeler:
    key = (target, tuple(sorted(spec.items())))
    if key not in _LABELERS:
        _LABELERS[key] = load_labeler(target, **spec)
    return _LABELERS[key]


@ray.remote
def _label_task(output: str, target: str, spec: dict, shards: list[int]) -> list[int]:
    return label_shards(output, target, _labeler(target, spec), shards)


def label_runner(cfg: RunConfig) -> LabelRunner:
    """The label stage's executor on Ray: tasks of `labels.shards_per_task` shards, one GPU each with cuda labels."""
    num_gpus = 1 if cfg.labels.device.startswith("cuda") else 0

    def run(target: str, shards: list[int]) -> Iterator[list[int]]:
        return label_with_ray(cfg.output, target, labeler_spec(cfg, target), shards, cfg.labels.shards_per_task,
                              num_gpus)

    return run


def label_with_ray(output: str, target: str, spec: dict, shards: list[int], shards_per_task: int = 4,
                   num_gpus: float = 0) -> Iterator[list[int]]:
    """Label `shards` in parallel tasks of `shards_per_task`; yields each task's labelled shards as it finishes."""
    task = _label_task.options(num_gpus=num_gpus)
    pending = [task.remote(output, target, spec, shards[i:i + shards_per_task])
               for i in range(0, len(shards), shards_per_task)]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


_WORKER_DATA: dict[str, GridData] = {}  # in each worker process: the grid's data by object id, memo included


def _worker_data(ref: ray.ObjectRef) -> GridData:
    """The grid's data, deserialised once per worker process rather than once per task, so what `GridData` memoises
    (labels at each layer shape, depth ranks, block sums: tens of ms per shape) is built once per worker."""
    key = ref.hex()
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()  # a new grid: drop the last one's
        _WORKER_DATA[key] = ray.get(ref)
    return _WORKER_DATA[key]


@ray.remote
def _fit_group_task(output: str, group: ProbeGroup, data: list[ray.ObjectRef]) -> tuple[ProbeGroup, list[dict]]:
    return group, fit_group(output, group, _worker_data(data[0]))  # a ref in a list: Ray does not resolve it


def fit_groups_with_ray(output: str, data: GridData, num_cpus: float = 1, max_in_flight: int = 256) -> FitMany:
    """A `fit_many` for `workflows.stages.grid.run_grid`: one Ray task per group, labels shared through the object
    store."""

    def fit_many(groups: list[ProbeGroup]) -> Iterator[tuple[ProbeGroup, list[dict]]]:
        data_ref = [ray.put(data)]
        task = _fit_group_task.options(num_cpus=num_cpus)
        queue, pending = list(groups), []
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                pending.append(task.remote(output, queue.pop(0), data_ref))
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])

    return fit_many
