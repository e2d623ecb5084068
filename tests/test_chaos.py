"""The chaos run (benchmarks/chaos.py) on a small toy config: the stages up to the probe grid on a 2-node local Ray
cluster while this run's own generator, label and probe-grid workers are SIGKILLed and a worker node is removed
mid-grid; the run must end equal to a calm run in every array and every table.

The intervention stage is left to the benchmark (it doubles this test's minutes: each of its actor pools loads the
model and labelers anew); its SIGKILLed actor is tested on its own in test_interventions_ray."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
SMALL = ["--set", "num_images=8", "--set", "steps=2", "--set", "shard_size=2", "--set", "batch_size=2",
         "--set", "hooks=[mid_0, up_1_0]", "--set", "probes.steps=[1]", "--set", "probes.bootstrap=50",
         "--set", "stages=[generate, controls, label, probe, report]"]
RAY_STAGES = {"generate", "controls", "label", "probe"}


def load_chaos():
    if "chaos" not in sys.modules:  # registered first: its dataclasses look their module up by name
        spec = importlib.util.spec_from_file_location("chaos", SCRIPT)
        sys.modules["chaos"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["chaos"])
    return sys.modules["chaos"]


def test_killed_workers_and_a_removed_node_leave_the_same_run(tmp_path, capsys):
    root, chaos = tmp_path / "chaos", load_chaos()
    status = chaos.main(["configs/toy.yaml", "--root", str(root), "--nodes", "2", "--kills", "1", "--every", "1",
                                "--remove-node-in", "probe", "--remove-after", "0.5", *SMALL])
    report = json.loads((root / "chaos.json").read_text())
    assert status == 0 and report["problems"] == []
    assert "chaos run equals the calm run" in capsys.readouterr().out
    killed = {(k["stage"], chaos.kind(k["process"])) for k in report["kills"]}
    assert {stage for stage, _ in killed} >= RAY_STAGES  # every stage that runs on Ray lost a worker
    assert {kind for _, kind in killed} >= {"GeneratorActor", "_label_task", "_fit_group_task"}
    assert report["node_removed"]["stage"] == "probe"
    # the comparison is not vacuous: both runs hold the stages' tables
    for table in ("probes/metrics.parquet", "report/index.html"):
        assert (root / "calm" / table).is_file() and (root / "chaos" / table).is_file()


def test_the_killer_sees_only_this_processs_busy_ray_workers():
    import os
    import subprocess

    titles = ["ray::Fake.run", "ray::IDLE", "ray::Fake.__init__", "ray::DashboardAgent", "python"]
    children = [subprocess.Popen(["bash", "-c", f"exec -a {t} sleep 30"]) for t in titles]
    try:
        seen = load_chaos().ray_workers(os.getpid())
        ours = {c.pid for c in children}
        assert {p: t for p, t in seen.items() if p in ours} == {children[0].pid: "ray::Fake.run"}
        assert load_chaos().ray_workers(children[-1].pid) == {}  # nothing below another process
    finally:
        for c in children:
            c.kill()
            c.wait()


def test_the_comparison_finds_a_changed_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from same_results import compare_tables  # benchmarks/ is on the path once chaos.py is loaded

    load_chaos()
    for name, score in (("a", 0.5), ("b", 0.5), ("c", 0.25)):
        (tmp_path / name / "probes").mkdir(parents=True)
        pq.write_table(pa.table({"hook": ["mid_0"], "r2": [score], "seconds": [float(len(name))]}),
                       tmp_path / name / "probes" / "metrics.parquet")
    assert compare_tables(tmp_path / "a", tmp_path / "b") == []  # timing columns aside
    assert compare_tables(tmp_path / "a", tmp_path / "c") == ["probes/metrics.parquet: rows differ"]
