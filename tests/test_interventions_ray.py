"""Interventions on a local Ray cluster: a real SIGKILL of an intervention actor mid-unit is retried on another actor
and the stage ends exactly as an uninterrupted one (tables and edited images), like generation does
(`test_workflows_ray.test_sigkill_mid_shard_is_retried_on_another_actor`).

The run is made with the fault-injecting test backend (`tests.test_workflows_backend`): the intervention actors load
the run's model with the run config's backend, so a `pause-<seed>` control file pauses the actor that edits the test
image with that seed (an edit unit renders one prompt and seed per target in one `generate()` call).
"""

import io
import math
import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_interventions import HOOKS, STEPS, fake_labelers, small_cfg
from test_workflows_backend import CONTROL
from workflows.config import PromptsConfig, RunConfig
from workflows.stages.edit_units import gather_inputs
from workflows.stages.generate import generate
from workflows.stages.grid import plan_groups, run_grid
from workflows.stages.grid_data import prepare_grid_data
from workflows.stages.interventions import run_interventions, unit_records
from workflows.stages.labels import label_shards
from workflows.stages.shard import load
from workflows.store import load_run_config, open_store
from workflows.store.paths import INTERVENTION_METRICS, INTERVENTION_SUMMARY, edited_images

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TIMING = ("seconds", "edit_seconds")  # wall-clock columns: the only ones allowed to differ between the two runs
CFG = dict(tasks=("saliency",), methods=("closed-form", "random"), max_images=2, actors=2, max_retries=2)


@pytest.fixture(scope="module")
def faulty_run(sd1_path, tmp_path_factory) -> str:
    """`test_interventions.build_tiny_run`'s run (generated, labelled, probed), made with the test backend so that its
    stored config makes the intervention actors load the fault-injecting model. In this process no control folder is
    set, so the backend behaves as the plain one here."""
    assert CONTROL not in os.environ
    output = str(tmp_path_factory.mktemp("faulty") / "run")
    cfg = RunConfig(backend="tests.test_workflows_backend", model=str(sd1_path), steps=STEPS, num_images=12,
                    test_fraction=0.25, output=output, shard_size=4, batch_size=4, extras=[], hooks=None,
                    prompts=PromptsConfig(source="toy"))
    assert generate(cfg, stream=io.StringIO()).ok
    assert load_run_config(output).backend == "tests.test_workflows_backend"
    for task, labeler in fake_labelers().items():
        label_shards(output, task, labeler)
    run_grid(output, plan_groups(output, hooks=HOOKS, steps=[0, 1]), prepare_grid_data(output))
    return output


def read_tables(output: str) -> dict[str, list[dict]]:
    return {path: pq.read_table(os.path.join(output, path)).to_pylist()
            for path in (INTERVENTION_METRICS, INTERVENTION_SUMMARY)}


def read_images(output: str, cfg) -> dict[str, np.ndarray]:
    store = open_store(output)
    return {f"{t}/{m}": store[edited_images(t, m)][:] for t in cfg.tasks for m in cfg.methods}


@pytest.fixture(scope="module")
def calm(cluster, faulty_run, tmp_path_factory):
    """The uninterrupted stage on a copy of the run, in this process with the actors' one torch thread."""
    import torch

    output = str(tmp_path_factory.mktemp("calm") / "run")
    shutil.copytree(faulty_run, output)
    cfg = small_cfg(**CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_interventions(output, cfg, model=load(load_run_config(output), device="auto"),
                                   labelers=fake_labelers(), stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    assert result.ok and result.done == 4
    return read_tables(output), read_images(output, cfg)


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_same_rows(rows, reference, what: str) -> None:
    assert len(rows) == len(reference), what
    for k, (row, ref) in enumerate(zip(rows, reference)):
        assert set(row) == set(ref), what
        # Exact: the actors and the calm run use one torch thread each, so every score is bit-identical.
        diff = {c: (row[c], ref[c]) for c in ref if c not in TIMING and not same_value(row[c], ref[c])}
        assert not diff, f"{what} row {k}: {diff}"


def test_sigkill_mid_unit_is_retried_on_another_actor(calm, faulty_run, control, tmp_path, monkeypatch):
    import workflows.ray.interventions as ray_interventions
    import workflows.ray.pool as ray_pool

    calls = []  # (unit key, attempt, actor id) of every call the pool makes

    class SpyPool(ray_pool.ActorPool):
        def run(self, items, call, key, **kw):
            def spied(actor, item, attempt):
                calls.append((key(item), attempt, actor._actor_id.hex()))
                return call(actor, item, attempt)

            return super().run(items, spied, key, **kw)

    monkeypatch.setattr(ray_pool, "ActorPool", SpyPool)  # the pool `keyed_runner` starts
    output = str(tmp_path / "run")
    shutil.copytree(faulty_run, output)
    cfg = small_cfg(**CFG)
    inputs = gather_inputs(output, cfg)
    # Units go out as closed-form on test images 1, 2, then random on 1, 2. The first generate() that holds the
    # second image's seed pauses: normally the second actor's first unit (closed-form), but when that actor starts
    # slowly the first actor may reach the random unit of the same image first. Either way it is one of this image's
    # two units, mid-unit, and the spy below says which one was retried.
    image, seed = int(inputs.test[1]), int(inputs.seeds[1])
    units_of_image = {f"saliency/{m}/{image:06d}" for m in cfg.methods}
    pause, paused = control / f"pause-{seed}", control / "paused"
    pause.touch()
    outcome = {}

    def stage():
        try:
            outcome["result"] = run_interventions(
                output, cfg, run_units=ray_interventions.unit_runner(output, cfg, labelers=fake_labelers()),
                stream=io.StringIO())
        except BaseException as err:  # reported by the test below
            outcome["error"] = err

    worker = threading.Thread(target=stage, daemon=True)
    pid = None
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not paused.exists() or not paused.read_text():
            assert worker.is_alive(), f"the stage ended before any actor paused: {outcome}"
            assert time.monotonic() < deadline, "no actor reached the pause"
            time.sleep(0.1)
        pid = int(paused.read_text())
        assert pid != os.getpid()  # an actor process, not the driver
        assert not units_of_image <= set(unit_records(output).done())  # one of them is mid-unit: no record yet
        os.kill(pid, signal.SIGKILL)
    finally:
        if pid is None and paused.exists() and paused.read_text():  # failed before the kill: free the sleeper
            stuck = int(paused.read_text())
            if stuck != os.getpid():
                os.kill(stuck, signal.SIGKILL)
        worker.join(timeout=180)
        pause.unlink()
        paused.unlink(missing_ok=True)
    assert not worker.is_alive(), "the stage did not finish within 180 s of the kill"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.ok and result.failed == {} and result.done == 4 and result.skipped == 0
    records = unit_records(output).done()
    assert sorted(records) == sorted(f"saliency/{m}/{i:06d}" for m in cfg.methods for i in inputs.test)
    retried = {k for k, attempt, _ in calls if attempt > 0}
    assert len(retried) == 1 and retried <= units_of_image, retried  # the paused unit, and no other, needed a retry
    (key,) = retried
    tries = [(attempt, actor) for k, attempt, actor in calls if k == key]
    assert [a for a, _ in tries] == [0, 1] and tries[0][1] != tries[1][1]  # retried once, on the other actor
    assert all(attempt == 0 for k, attempt, _ in calls if k != key)  # no other unit needed a retry
    assert [r["image"] for r in records[key]] == [image] * cfg.targets.count
    tables, images = calm
    for path, reference in tables.items():
        assert_same_rows(read_tables(output)[path], reference, path)
    for name, reference in images.items():
        np.testing.assert_array_equal(read_images(output, cfg)[name], reference, err_msg=name)
