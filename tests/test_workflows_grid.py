"""Label stage and probe grid on a synthetic store whose answer is known (no model, no Ray)."""

import numpy as np
import pytest
import zarr

from ldm.errors import UserError
from synthetic_run import build, fake_labelers
from workflows.stages.grid import (
    ProbeGroup, finished_groups, fit_group, load_probe, plan_groups, prepare_grid_data, read_metrics, run_grid,
)
from workflows.stages.labels import label_shards, labelled_shards, read_labels
from workflows.store import open_store


def label_all(output):
    for target, labeler in fake_labelers().items():
        label_shards(output, target, labeler)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("grid") / "run")
    build(output)
    label_all(output)
    return output


def test_labels_are_stored_with_their_labeler(run):
    labels = read_labels(run, "saliency")
    assert labels.shape == (24, 16, 16) and set(np.unique(labels)) <= {0.0, 1.0}
    arr = open_store(run)["labels/depth"]
    assert arr.attrs["labeler"] == "fake-depth" and arr.attrs["version"] == "v1"
    assert labelled_shards(run, "depth") == set(range(6))


def test_labels_resume_and_refuse_another_labeler(run):
    assert label_shards(run, "depth", fake_labelers()["depth"]) == []  # nothing left to do
    other = fake_labelers()["depth"]
    other.version = "v2"
    with pytest.raises(UserError, match="made by fake-depth v1, not fake-depth v2"):
        label_shards(run, "depth", other)


def test_incomplete_shards_are_neither_labelled_nor_probed(tmp_path):
    output = str(tmp_path / "run")
    build(output, complete_shards=[0, 1, 2, 3, 5])
    label_all(output)
    assert labelled_shards(output, "saliency") == {0, 1, 2, 3, 5}
    with pytest.raises(UserError, match=r"4 images have no saliency labels \(images 16, 17, 18, 19\)"):
        read_labels(output, "saliency", np.arange(24))
    data = prepare_grid_data(output)
    assert not set(data.train) & set(range(16, 20)) and not set(data.test) & set(range(16, 20))


def test_grid_finds_the_planted_layer_and_beats_controls(run):
    data = prepare_grid_data(run, n_boot=200)
    assert set(data.train).isdisjoint(data.test) and len(data.test) == 8
    table = run_grid(run, plan_groups(run), data)
    rows = table.to_pylist()
    assert len(rows) == 2 * 2 * 2 * 2 + 2  # (hook x step) x target x (probe, shuffled) + position per target
    get = {(r["variant"], r["hook"], r["step"], r["target"]): r for r in rows}
    good, noise = get[("ldm", "good", 1, "saliency")], get[("ldm", "noise", 1, "saliency")]
    assert good["dice"] > 0.9 and noise["dice"] < 0.75
    assert good["dice_lo"] <= good["dice"] <= good["dice_hi"]
    assert get[("ldm", "good", 0, "depth")]["r2_pos"] > 0.8
    assert get[("ldm", "noise", 0, "depth")]["r2_pos"] < 0.3
    assert get[("shuffled", "good", 0, "depth")]["r2_pos"] < 0.3  # shuffled labels: nothing image-specific to learn
    assert get[("position", "-", -1, "depth")]["r2_pos"] == pytest.approx(0.0, abs=0.05)
    assert read_metrics(run).num_rows == len(rows)


def test_probe_weights_round_trip(run):
    probe = load_probe(run, "ldm", "saliency", "good", 1)
    acts = zarr.open_group(f"{run}/store.zarr")["acts/good/act"][:4, 1].astype(np.float32)
    logits = acts @ probe.raw_weight + probe.raw_bias
    assert ((logits > 0) == (acts[..., 0] > 0)).mean() > 0.9
    with pytest.raises(UserError, match="no fitted probe"):
        load_probe(run, "permuted", "saliency", "good", 1)


def test_grid_resumes_without_refitting(run, monkeypatch):
    before = finished_groups(run)
    assert len(before) == 4
    monkeypatch.setattr("workflows.stages.grid.fit_group", lambda *a: pytest.fail("refit a finished group"))
    data = prepare_grid_data(run, n_boot=200)
    assert run_grid(run, plan_groups(run), data).num_rows == 18


def test_non_finite_activations_are_flagged_per_probe(tmp_path):
    output = str(tmp_path / "run")
    build(output)
    label_all(output)
    root = zarr.open_group(f"{output}/store.zarr", mode="r+")
    root["acts/noise/act"][0, 0, 0, 0, 0] = np.nan
    rows = fit_group(output, ProbeGroup("ldm", "noise", 0), prepare_grid_data(output, n_boot=50))
    assert all(r["error"] and "non-finite" in r["error"] for r in rows)


def test_bad_grid_requests(run):
    with pytest.raises(UserError, match="hook point\\(s\\) up_9 not in the store; stored: good, noise"):
        plan_groups(run, hooks=["up_9"])
    with pytest.raises(UserError, match="step\\(s\\) \\[5\\] not in the store"):
        plan_groups(run, steps=[5])


def test_ray_grid_matches_local(run, tmp_path):
    """The Ray fan-out gives the same rows as the in-process grid."""
    import ray

    from workflows.ray.tasks import fit_groups_with_ray, label_with_ray

    output = str(tmp_path / "run")
    build(output)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # labels through Ray tasks with a labeler spec; the fake labelers are not loadable by spec, so label here
        label_all(output)
        data = prepare_grid_data(output, n_boot=200)
        table = run_grid(output, plan_groups(output), data, fit_many=fit_groups_with_ray(output, data))
        with pytest.raises(Exception, match="unknown depth labeler"):
            list(label_with_ray(output, "depth", {"kind": "nope"}, [0]))
    finally:
        ray.shutdown()
    local = {(r["variant"], r["hook"], r["step"], r["target"]): r["dice"] for r in read_metrics(run).to_pylist()}
    remote = {(r["variant"], r["hook"], r["step"], r["target"]): r["dice"] for r in table.to_pylist()}
    assert local.keys() == remote.keys()
    for key in local:
        assert local[key] == pytest.approx(remote[key], nan_ok=True, abs=1e-9)


def test_block_sum_scores_equal_the_full_scorers_and_controls_share_x_statistics(run):
    from probes.metrics import score_depth, score_saliency
    from workflows.stages.grid import GroupActs, fit_and_score, read_activations, score_prediction

    data = prepare_grid_data(run, n_boot=50)
    every = read_activations(run, ProbeGroup("ldm", "good", 1), np.concatenate([data.train, data.test]))
    acts = GroupActs(every[: len(data.train)], every[len(data.train):], data)
    rng = np.random.default_rng(0)
    h, w = every.shape[1:3]
    for split, n in ((1, len(data.test)), (0, len(data.train))):
        prob, depth = rng.random((n, h, w)), rng.normal(size=(n, h, w))
        positioned = data.mean_map_at("depth", h, w) + rng.normal(size=(n, h, w))
        kw = {"n_boot": 50, "seed": data.seed} if split else {"n_boot": 1, "resolutions": ("image",)}
        want = [score_saliency(prob, data.labels["saliency"][split], **kw),
                score_depth(depth, data.labels["depth"][split], data.mean_maps["depth"], positioned=positioned,
                            ranks=bool(split), **kw)]
        got = [score_prediction("saliency", prob, data, split=split),
               score_prediction("depth", depth, data, positioned, split=split)]
        for g, wnt in zip(got, want):
            assert g.estimates.keys() == wnt.estimates.keys() and g.flags == wnt.flags
            for key, est in wnt.estimates.items():
                for field in ("mean", "lo", "hi"):
                    assert getattr(g.estimates[key], field) == pytest.approx(getattr(est, field), rel=1e-5, abs=1e-9,
                                                                             nan_ok=True), (split, key, field)
    assert {k[0] for k in data._memo} >= {"blocks"}  # the block-sum path was taken
    bad = rng.random((len(data.test), h, w))
    bad[2, 0, 0] = np.nan  # non-finite predictions still take the full scorer, which names the image
    with pytest.raises(Exception, match=r"images \[2\]"):
        score_prediction("saliency", bad, data)
    # the shuffled-label control shares the group's standardised blocks, and with them x's ridge statistics
    fit_and_score(acts, "depth", data)
    memo = dict(acts.fit_kwargs()["blocks"].memo)
    control, _ = fit_and_score(acts, "depth", data, shuffled=True)
    assert control["error"] is None and acts.fit_kwargs()["blocks"].memo.keys() == memo.keys()
