"""Normals and light as run targets, on a synthetic store whose answer is known (no model, no Ray): the label stage's
layout, the probe grid's vector probes against their controls, the findings and report rows, the label ceilings'
arithmetic on exact truth, and the refusal of a target a model has no labeler for."""

import numpy as np
import pytest

from ldm.errors import UserError
from ldm.labelers import Labeler, check_labelers
from synthetic_run import build, fake_labelers, fake_vector_labelers
from workflows.config import RunConfig, VECTOR_TARGETS, from_dict
from workflows.report.findings import format_findings
from workflows.report.page import build_report
from workflows.stages.ceilings import ceiling_values
from workflows.stages.grid import load_probe, plan_groups, prepare_grid_data, run_grid
from workflows.stages.labels import check_run_labelers, label_shards, read_labels
from workflows.store import open_store

TARGETS = ("saliency", "depth", "normals", "light")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("vectors") / "run")
    build(output, vectors=True)
    for target, labeler in (fake_labelers() | fake_vector_labelers()).items():
        label_shards(output, target, labeler)
    return output


@pytest.fixture(scope="module")
def rows(run):
    data = prepare_grid_data(run, TARGETS, n_boot=200)
    return run_grid(run, plan_groups(run), data).to_pylist()


def test_vector_labels_are_stored_with_their_mask(run):
    root = open_store(run)
    normals, valid, light = read_labels(run, "normals"), read_labels(run, "normals", mask=True), read_labels(run, "light")
    assert normals.shape == (24, 16, 16, 3) and valid.shape == (24, 16, 16) and valid.dtype == bool
    assert light.shape == (24, 3) and root["labels/light"].attrs["labeler"] == "fake-light"
    images = root["images"][:]
    np.testing.assert_array_equal(valid, images[..., 2] >= 64)  # the labeler's zero vectors are the invalid pixels
    np.testing.assert_allclose(np.linalg.norm(normals[valid], axis=-1), 1, atol=1e-5)
    assert not normals[~valid].any()
    np.testing.assert_allclose(np.linalg.norm(light, axis=-1), 1, atol=1e-5)
    assert tuple(root["labels/normals"].metadata.dimension_names) == ("image", "y", "x", "xyz")


def test_labeler_output_shape_is_checked():
    bad = Labeler("bad-light", "v1", "light", lambda im: np.zeros((len(im), 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"expected \(image, 3\)"):
        bad(np.zeros((2, 16, 16, 3), np.uint8))


def test_vector_probes_find_the_planted_layer_and_beat_their_controls(rows):
    get = {(r["variant"], r["hook"], r["step"], r["target"]): r for r in rows}
    for target in VECTOR_TARGETS:
        good, noise = get[("ldm", "good", 1, target)], get[("ldm", "noise", 1, target)]
        shuffled, position = get[("shuffled", "good", 1, target)], get[("position", "-", -1, target)]
        assert good["error"] is None and good["angle_pos_lo"] > 20, good  # degrees gained over position
        assert good["angle_mean"] < 15 and good["angle_mean_lo"] <= good["angle_mean"] <= good["angle_mean_hi"]
        assert noise["angle_pos_lo"] < 5 < good["angle_pos_lo"]
        assert shuffled["angle_pos"] < good["angle_pos_lo"] - 15
        assert position["angle_pos"] == 0 and position["angle_mean"] > good["angle_mean_hi"]
        assert good["val_score"] > 20 and len(good["per_image"]) == good["n_test"] == 8
    assert get[("ldm", "good", 1, "normals")]["within_30"] > 0.9
    assert get[("ldm", "good", 1, "normals")]["layer_angle_mean"] < 15  # the layer resolution's twin
    # the map targets are fit beside them as before
    assert get[("ldm", "good", 1, "saliency")]["dice"] > 0.9


def test_vector_probes_round_trip(run, rows):
    probe = load_probe(run, "ldm", "light", "good", 1)
    data = prepare_grid_data(run, ("light",), n_boot=10)
    assert probe.weight.shape[1] == 3 and np.isfinite(probe.alpha)
    with pytest.raises(UserError, match="no fitted probe"):
        load_probe(run, "permuted", "normals", "good", 1)
    assert data.mean_maps["light"].shape == (3,)


def test_findings_and_report_have_the_new_rows(run, rows):
    text = format_findings(rows)
    for target in VECTOR_TARGETS:
        assert f"### {target}: degrees gained over position" in text
    assert "No claim of the paper's covers normals" in text and "beats the permuted control from step 3" in text
    page = build_report(run).read_text()
    assert "degrees gained over position" in page and "<h3>light</h3>" in page
    assert "assets/pred_normals_" in page and "pred_light_" not in page  # normals pictured; the light has no map


def test_ceiling_arithmetic_on_exact_truth():
    """A perfect labeler scores 0 degrees, Dice 1, Spearman 1; the position-only prediction gains 0 degrees."""
    from ldm.toy.render import render_batch
    from probes.baselines_vectors import mean_direction, mean_normal_map

    test, train = render_batch(np.arange(10**6, 10**6 + 6), size=32), render_batch(np.arange(6), size=32)
    perfect = {"depth": 1.0 / test.depth, "saliency": test.salient.astype(np.float32), "normals": test.normals,
               "light": test.light_direction}
    for target, pred in perfect.items():
        v = ceiling_values(target, pred, test, train)
        if target == "depth":
            assert v["rmse"].max() < 1e-6 and v["spearman"].min() > 0.999 and v["r2_pos"].min() > 0.999
        elif target == "saliency":
            assert v["dice"].min() == 1.0
        else:
            assert v["angle_mean"].max() < 0.1 and (v["angle_pos"] > 0).mean() > 0.5
    base = ceiling_values("normals", np.broadcast_to(mean_normal_map(train.normals, train.surface),
                                                     test.normals.shape), test, train)
    np.testing.assert_allclose(base["angle_pos"], 0, atol=1e-9)
    light = np.broadcast_to(mean_direction(train.light_direction), (6, 3))
    np.testing.assert_allclose(ceiling_values("light", light, test, train)["angle_pos"], 0, atol=1e-9)


def test_a_target_without_a_labeler_for_the_model_is_refused_first():
    cfg = from_dict({"model": "CompVis/stable-diffusion-v1-4", "prompts": {"source": "file", "path": "p.csv"},
                     "probes": {"targets": ["saliency", "normals"]}})
    with pytest.raises(UserError, match="labels.normals.kind: toy was trained on toy-world renders .* not "
                                        "'CompVis/stable-diffusion-v1-4'.*; choose labels.normals.kind: marigold"):
        check_run_labelers(cfg)
    with pytest.raises(UserError, match="remove light from probes.targets"):
        check_labelers("CompVis/stable-diffusion-v1-4", {"light": "toy"})
    check_labelers("CompVis/stable-diffusion-v1-4", {"normals": "marigold"})
    check_labelers("toy-dit", {"normals": "toy", "light": "toy"})  # the toy DiT draws toy-world images too
    check_run_labelers(RunConfig(probes=from_dict({"probes": {"targets": list(TARGETS)}}).probes))  # toy: fine
    with pytest.raises(UserError, match="unknown light labeler 'dpt'; choose one of toy"):
        check_labelers("toy", {"light": "dpt"})


def test_parallel_label_tasks_create_the_arrays_once_and_keep_each_others_labels(tmp_path, monkeypatch):
    """The Ray label tasks of one target start together: each one finds no array and creates it. Every task here
    reaches creation before any has created (a barrier), and the labels array is then made by one task after
    another; each must open what another made, and no task's mask may be wiped by a later creation."""
    import threading

    import workflows.stages.labels as stage

    output = str(tmp_path / "run")
    build(output, vectors=True)
    labeler, shards = fake_vector_labelers()["normals"], [0, 1, 2]
    barrier, one_at_a_time = threading.Barrier(len(shards)), threading.Lock()

    class Racing:  # the store as each task sees it, with creations lined up as the race lines them up
        def __init__(self, root):
            self.root = root

        def __getattr__(self, name):
            return getattr(self.root, name)

        def __contains__(self, path):
            return path in self.root

        def __getitem__(self, path):
            return self.root[path]

        def create_array(self, path, **spec):
            if path == "labels/normals_valid":
                barrier.wait(timeout=30)
            with one_at_a_time:
                return self.root.create_array(path, **spec)

    opened = stage.open_store
    monkeypatch.setattr(stage, "open_store", lambda *a, **k: Racing(opened(*a, **k)))
    errors = []

    def task(shard):
        try:
            stage.label_shards(output, "normals", labeler, [shard])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=task, args=(s,)) for s in shards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    images = open_store(output)["images"][:]
    labelled = np.arange(12)  # shards 0-2 of 4 images
    np.testing.assert_array_equal(read_labels(output, "normals", labelled, mask=True), images[:12, ..., 2] >= 64)
