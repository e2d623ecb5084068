"""Tests for the toy LDM's quality measurement (ldm/toy/quality.py) and the `sceneprobe toy` commands."""

from __future__ import annotations

import numpy as np
import pytest

from ldm.toy.captions import COLOURS
from ldm.toy.quality import (
    caption_objects, colour_features, contact_sheet, fit_colour_classifier, measure_quality, predict_colour,
    round_trip_sheet,
)
from ldm.toy.render import render_batch


def test_caption_objects_lists_object_colours_not_the_floor():
    assert caption_objects("a red sphere left of an orange cube and a blue cone on a grey checkered floor") == [
        "red", "orange", "blue"]
    assert caption_objects("a white cylinder in a room with a red plain floor") == ["white"]
    assert caption_objects("on a grey plain floor") == []


def test_colour_features_of_a_known_patch_and_an_empty_mask():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, :2] = (255, 0, 0)  # bright red top half
    images[0, 2:] = (51, 0, 0)  # dark red bottom half
    masks = np.zeros((2, 4, 4), bool)
    masks[0] = True
    f = colour_features(images, masks)
    assert np.allclose(f[0, :3], [0.6, 0, 0])  # mean
    assert np.allclose(f[0, 3:6], [1, 0, 0])  # the brighter half
    assert np.allclose(f[0, 6:9], [1, 0, 0])  # its chromaticity
    assert np.isnan(f[1]).all()


@pytest.fixture(scope="module")
def classifier():
    return fit_colour_classifier(list(range(300)))


def test_colour_reader_and_quality_on_renders_with_exact_masks(classifier):
    held_out = render_batch(list(range(1_000_000, 1_000_064)))
    q = measure_quality(held_out.rgb, list(held_out.captions), held_out.salient.astype(np.float32), classifier)
    assert q.n == 64 and q.found == 1.0 and q.n_single > 5
    assert q.colour_match >= 0.75  # the reader is right on most rendered objects (94% with 1,500 fitting scenes)
    # An image whose "mask" is empty is not found and reads no colour.
    empty = np.zeros_like(held_out.salient, dtype=np.float32)
    q0 = measure_quality(held_out.rgb, list(held_out.captions), empty, classifier)
    assert q0.found == 0.0 and q0.colour_match == 0.0
    assert (predict_colour(classifier, held_out.rgb[:2], empty[:2] > 0.5) == -1).all()


def test_colour_match_fails_for_the_wrong_colour(classifier):
    """Flat patches of each palette colour read as themselves far more often than as a named wrong colour."""
    from ldm.toy.captions import PALETTE

    images = np.stack([np.full((16, 16, 3), np.round(np.array(PALETTE[c]) * 0.8 * 255), np.uint8) for c in COLOURS])
    masks = np.ones((len(COLOURS), 16, 16), bool)
    read = predict_colour(classifier, images, masks)
    assert (read == np.arange(len(COLOURS))).mean() >= 0.75


def test_contact_sheet_layout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    sheet = contact_sheet(images, rng.random((5, 64, 64)), rng.random((5, 64, 64)), ["a red cube on a floor"] * 5,
                          per_row=2, scale=2)
    assert sheet.dtype == np.uint8 and sheet.shape[2] == 3
    assert sheet.shape[1] == 2 * (3 * 128 + 8) + 8 and sheet.shape[0] == 3 * (128 + 26 + 8) + 8
    assert (sheet[8 : 8 + 128, 8 : 8 + 128] == images[0].repeat(2, 0).repeat(2, 1)).all()


def test_round_trip_sheet_puts_renders_above_their_round_trips():
    rng = np.random.default_rng(0)
    renders, decoded = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    sheet = round_trip_sheet(renders, decoded, zoom=2)
    assert sheet.shape == (64, 96, 3)
    assert (sheet[:32, 32:64] == renders[1].repeat(2, 0).repeat(2, 1)).all()
    assert (sheet[32:, 64:] == decoded[2].repeat(2, 0).repeat(2, 1)).all()


def test_toy_train_command_routes_arguments(monkeypatch):
    from ldm.toy import finetune_decoder, train_labelers, train_ldm
    from workflows.cli import main

    calls = []
    monkeypatch.setattr(train_labelers, "main", lambda argv: calls.append(("labelers", argv)))
    monkeypatch.setattr(train_ldm, "main", lambda argv: calls.append(("ldm", argv)))
    monkeypatch.setattr(finetune_decoder, "main", lambda argv: calls.append(("decoder", argv)))
    assert main(["toy", "train", "--out", "/tmp/x", "--vae-steps", "4000", "--unet-steps", "7", "--max-minutes", "2"]) == 0
    assert [c[0] for c in calls] == ["labelers", "ldm", "decoder"]
    assert calls[2][1][:2] == ["--model", "/tmp/x"]
    argv = calls[1][1]
    assert argv[argv.index("--out") + 1] == "/tmp/x" and argv[argv.index("--unet-steps") + 1] == "7"
    assert argv[argv.index("--vae-steps") + 1] == "4000"
    assert "--resume" not in argv and "--init-from" not in argv
    calls.clear()
    assert main(["toy", "train", "--skip-labelers", "--init-from", "ldm/toy/checkpoint", "--decoder-steps", "0"]) == 0
    assert [c[0] for c in calls] == ["ldm"]
    assert calls[0][1][calls[0][1].index("--init-from") + 1] == "ldm/toy/checkpoint"
    calls.clear()
    assert main(["toy", "train", "--resume", "--decoder-steps", "0"]) == 0
    assert [c[0] for c in calls] == ["ldm"] and "--resume" in calls[0][1]


def test_vae_round_trip_keeps_shape_and_range(tmp_path):
    from ldm.toy.captions import VOCABULARY
    from ldm.toy.model import build_toy_ldm
    from ldm.toy.quality import vae_round_trip
    from test_toy_model import tiny_config

    vae = build_toy_ldm(sorted(VOCABULARY), tmp_path, tiny_config()).vae.eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    out = vae_round_trip(vae, images, batch=2)
    assert out.shape == images.shape and out.dtype == np.uint8


def test_decoder_finetune_keeps_the_latent_space_and_lowers_the_loss(tmp_path):
    import torch

    from ldm.toy.captions import VOCABULARY
    from ldm.toy.finetune_decoder import finetune_decoder
    from ldm.toy.model import build_toy_ldm
    from ldm.toy.train_ldm import encode_means
    from test_toy_model import tiny_config

    torch.manual_seed(0)
    vae = build_toy_ldm(sorted(VOCABULARY), tmp_path, tiny_config()).vae
    images = render_batch(list(range(8))).rgb
    before = encode_means(vae, images)
    losses = finetune_decoder(vae, images, steps=30, batch=8, lr=1e-3)
    assert torch.allclose(encode_means(vae, images), before, atol=1e-5)  # encoder untouched: the U-Net stays valid
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_wilson_interval_brackets_the_proportion():
    from ldm.toy.quality import wilson_interval

    lo, hi = wilson_interval(28, 70)
    assert lo < 0.4 < hi and 0.28 < lo and hi < 0.53
    lo, hi = wilson_interval(70, 70)  # all successes: the interval stays below 1 and away from the point
    assert 0.94 < lo < 1.0 and hi == pytest.approx(1.0)
    assert np.isnan(wilson_interval(0, 0)[0])
