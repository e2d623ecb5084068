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


def test_normals_and_light_go_through_label_probe_and_report(tmp_path):
    """A tiny toy run probing only the new targets: labels in their layout, vector probes with their controls, the
    label ceilings (the trained heads beat position alone against exact truth), the report's rows and ceiling line."""
    import zarr

    from toy_runs import toy_config

    config, out = toy_config(
        tmp_path, num_images=12, steps=2, shard_size=4, batch_size=4, hooks=["mid_0"], extras=["latent"],
        stages=["generate", "label", "probe", "report"], labels={"ceiling_images": 24},
        probes={"targets": ["normals", "light"], "steps": [1], "bootstrap": 100, "controls": []})
    assert main(["run", config, "--no-ray"]) == 0
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert root["labels/normals"].shape == (12, 64, 64, 3) and root["labels/normals_valid"].dtype == bool
    assert root["labels/light"].shape == (12, 3)
    metrics = pq.read_table(out / "probes" / "metrics.parquet").to_pylist()
    assert {(r["variant"], r["hook"], r["target"]) for r in metrics} == {
        (v, h, t) for t in ("normals", "light") for v, h in (("ldm", "mid_0"), ("ldm", "latent"), ("shuffled", "mid_0"),
                                                             ("shuffled", "latent"), ("position", "-"))}
    assert all(r["error"] is None and r["angle_mean_lo"] <= r["angle_mean"] <= r["angle_mean_hi"] for r in metrics)
    assert {r["angle_pos"] for r in metrics if r["variant"] == "position"} == {0.0}
    ceilings = {(r["target"], r["metric"]): r for r in pq.read_table(out / "label_ceilings.parquet").to_pylist()}
    for target in ("normals", "light"):  # the labelers know more than the layout prior: true signal to probe
        assert ceilings[(target, "angle_pos")]["lo"] > 0 and ceilings[(target, "angle_pos")]["n_images"] == 24
    page = (out / "report" / "index.html").read_text()
    assert "Label ceilings" in page and "labeler ceiling" in page and "degrees gained over position" in page
    # the ceilings are kept on a resume with the same labelers and count, remade for another count
    before = (out / "label_ceilings.parquet").stat().st_mtime_ns
    assert main(["label", config, "--no-ray"]) == 0 and (out / "label_ceilings.parquet").stat().st_mtime_ns == before
    assert main(["label", config, "--no-ray", "--set", "labels.ceiling_images=8"]) == 0
    assert {r["n_images"] for r in pq.read_table(out / "label_ceilings.parquet").to_pylist()} == {8}
