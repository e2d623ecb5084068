"""The position and caption controls: probes on features that carry no picture, which can score (they are not 0 by
construction), fit like every probe, saved and reproducible; and their bad inputs."""

import json

import numpy as np
import pytest

from ldm.errors import UserError
from probes.fit import fit_probe
from probes.metrics import dice_iou
from probes.positional import CaptionBasis, caption_features, position_basis, position_features
from synthetic_run import build, fake_labelers
from workflows.stages.grid import load_probe, plan_groups, prepare_grid_data, run_grid
from workflows.stages.labels import label_shards


def test_the_position_basis_spans_smooth_layouts_and_nothing_else():
    basis = position_basis(16, 12)
    assert basis.shape == (16, 12, 35) and basis.dtype == np.float32
    flat = basis.reshape(-1, 35).astype(np.float64)
    assert np.abs(flat.mean(0)).max() < 1e-6  # no constant: the probe's bias is the constant
    v, u = np.meshgrid((np.arange(16) + 0.5) / 16, (np.arange(12) + 0.5) / 12, indexing="ij")
    for smooth in (v, (u - 0.5) ** 2 + v, np.exp(-((u - 0.5) ** 2 + (v - 0.6) ** 2) * 8)):
        x = np.concatenate([flat, np.ones((len(flat), 1))], 1)
        fit = x @ np.linalg.lstsq(x, smooth.reshape(-1), rcond=None)[0]
        assert 1 - np.var(smooth.reshape(-1) - fit) / np.var(smooth) > 0.98
    assert position_features(5, 4, 4).shape == (5, 4, 4, 35)


def left_or_right(n: int = 40, h: int = 8, w: int = 8):
    """Masks on the left half when the caption embedding says "left" (+1 on one axis), else on the right: a layout
    the caption decides and position alone cannot (the mean mask is flat)."""
    rng = np.random.default_rng(0)
    side = np.arange(n) % 2 == 0
    emb = rng.normal(0, 0.1, size=(n, 16))
    emb[:, 3] += np.where(side, 1.0, -1.0)
    masks = np.zeros((n, h, w), np.float32)
    masks[side, :, : w // 2] = 1
    masks[~side, :, w // 2:] = 1
    return emb, masks


def test_a_caption_control_can_score_where_position_alone_cannot():
    emb, masks = left_or_right()
    train, test = np.arange(30), np.arange(30, 40)
    h, w = masks.shape[1:]
    basis = CaptionBasis.fit(emb[train], k=4)
    scores = basis.project(emb)
    features = caption_features(scores, h, w)
    assert features.shape == (40, h, w, 35 + 4 + 4 * 35)
    caption = fit_probe(features[train], masks[train], "saliency").predict(features[test])
    position = fit_probe(position_features(30, h, w), masks[train], "saliency").predict(position_features(10, h, w))
    truth = masks[test] > 0.5
    assert dice_iou(caption > 0.5, truth)["dice_fg"].mean() > 0.95  # the caption says where the object is
    assert np.abs(position - 0.5).max() < 0.05  # position alone: a coin toss everywhere


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("controls") / "run")
    build(output)
    for target, labeler in fake_labelers().items():
        label_shards(output, target, labeler)
    return output


def test_caption_and_position_rows_are_fit_saved_and_reproducible(run, monkeypatch):
    from safetensors.numpy import load_file

    from workflows.stages.grid_controls import CONTROL_WEIGHTS, control_rows
    from workflows.store import load_layout
    from workflows.store.paths import CAPTION_EMBEDDINGS

    data = prepare_grid_data(run, n_boot=50)
    rows = control_rows(run, "toy", data, ("caption",), load_layout(run))
    by = {(r["variant"], r["target"]): r for r in rows}
    assert set(by) == {(v, t) for v in ("position", "caption") for t in ("saliency", "depth")}
    for r in rows:
        assert r["error"] is None and r["hook"] == "-" and r["step"] == -1 and np.isfinite(r["val_score"])
        assert len(r["per_image"]) == len(data.test)
    assert by[("position", "saliency")]["dev_pos"] == 0.0  # the reference of saliency beyond position is itself
    # the caption embeddings are kept with their image ids: a second fit does not load the text encoder again
    kept = load_file(f"{run}/{CAPTION_EMBEDDINGS}")
    assert np.array_equal(kept["image"], np.concatenate([data.train, data.test])) and kept["embedding"].shape[1] == 64
    monkeypatch.setattr("ldm.captions.caption_embeddings", lambda *a, **k: pytest.fail("embedded again"))
    again = control_rows(run, "toy", data, ("caption",), load_layout(run))
    assert [r["per_image"] for r in again] == [r["per_image"] for r in rows]
    # the stored probe and caption basis reproduce the row's per-image headline
    weights = load_file(f"{run}/{CONTROL_WEIGHTS}")
    basis = CaptionBasis(weights["caption/basis/mean"], weights["caption/basis/components"],
                         weights["caption/basis/scale"])
    h, w = data.area_labels("saliency", 4, 4).shape[1:]  # the synthetic store's finest layer is 4x4
    test_features = caption_features(basis.project(kept["embedding"][len(data.train):]), h, w)
    probe = load_probe(run, "caption", "saliency", "-", -1)
    from probes.resample import upsample_nearest

    pred = upsample_nearest(probe.predict(test_features), *data.labels["saliency"][1].shape[1:])
    dice = dice_iou(pred > by[("caption", "saliency")]["threshold"], data.labels["saliency"][1] > 0.5)["dice_fg"]
    assert by[("caption", "saliency")]["per_image"] == pytest.approx(dice.tolist())


def test_the_grid_keeps_the_position_control_without_a_caption(run):
    table = run_grid(run, plan_groups(run, hooks=["good"], steps=[0]), prepare_grid_data(run, n_boot=50))
    variants = {(r["variant"], r["target"]) for r in table.to_pylist() if r["step"] == -1}
    assert variants == {("position", "saliency"), ("position", "depth")}


def test_bad_inputs_of_the_controls(tmp_path, run, capsys):
    from ldm.captions import check_text_encoder
    from workflows.cli import main
    from workflows.stages.grid_scores import check_position_controls

    folder = tmp_path / "unconditional"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "x"]}))
    with pytest.raises(UserError, match="has no text encoder.*remove 'caption' from probes.controls"):
        check_text_encoder(str(folder))
    check_text_encoder("toy")
    with pytest.raises(UserError, match=r"target\(s\) albedo have no position control defined.*saliency, depth, "
                                        "normals, light"):
        check_position_controls(["saliency", "normals", "albedo"])
    run_grid(run, plan_groups(run, hooks=["good"], steps=[0]), prepare_grid_data(run, n_boot=50))
    assert main(["findings", run, "--metric", "dice5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown metric 'dice5'") and "dev_pos" in err[0]
    assert main(["findings", run, "--metric", "dev_pos"]) == 0
