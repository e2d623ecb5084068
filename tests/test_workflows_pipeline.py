"""The whole main job on the toy model, every stage chained by `sceneprobe run`, in-process (Ray runs elsewhere)."""

import pyarrow.parquet as pq

from workflows.cli import main

ARGS = ["--no-ray", "--set", "num_images=16", "--set", "steps=3", "--set", "shard_size=4",
        "--set", "probes.steps=[1]", "--set", "probes.bootstrap=100",
        "--set", 'interventions={"max_images": 1, "targets": {"count": 1}, "iters": 4, "saliency_steps": [1], '
                 '"depth_steps": [1], "patching": {"pairs": 2, "layers": ["mid_0"], "steps": [1], '
                 '"max_overlap": 1.0}}']


def test_run_chains_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/toy.yaml", "--output", str(out), *ARGS]) == 0
    metrics = pq.read_table(out / "probes" / "metrics.parquet").to_pylist()
    assert {r["variant"] for r in metrics} == {"ldm", "permuted", "shuffled", "position", "caption"}
    assert {r["hook"] for r in metrics if r["variant"] == "ldm"} >= {"up_1_0", "latent"}
    summary = pq.read_table(out / "interventions" / "summary.parquet").to_pylist()
    assert {(r["task"], r["method"]) for r in summary} == {
        (t, m) for t in ("saliency", "depth") for m in ("closed-form", "paper", "random")}
    patching = pq.read_table(out / "interventions" / "patching.parquet").to_pylist()  # the map, made first
    assert [(r["view"], r["hook"], r["step"], r["n_pairs"]) for r in patching] == [("cell", "mid_0", 1, 2),
                                                                                 ("window", "mid_0", 1, 2)]
    assert (out / "report" / "index.html").stat().st_size > 10_000
    capsys.readouterr()
    # a second run of the same command needs --resume, and then finds nothing left to do
    assert main(["run", "configs/toy.yaml", "--output", str(out), *ARGS]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["run", "configs/toy.yaml", "--output", str(out), "--resume", *ARGS]) == 0
    err = capsys.readouterr().err
    assert "0 to generate" in err and "0 shards labelled" in err and "(6 done earlier, 0 to run)" in err
    assert "(2 pairs done earlier, 0 to run)" in err


def test_single_stage_names_the_missing_one(tmp_path, capsys):
    assert main(["probe", "configs/toy.yaml", "--output", str(tmp_path / "none"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "no generated run" in err and "sceneprobe generate CONFIG" in err
