"""Labelers on tiny random-weight transformers configs saved to disk (the real loading code, no downloads)."""

import numpy as np
import pytest

from ldm.errors import UserError
from ldm.labelers import load_depth_labeler, load_normals_labeler, load_saliency_labeler

IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = tmp_path_factory.mktemp("dpt")
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32, patch_size=8,
        backbone_out_indices=(0, 1, 2, 3), neck_hidden_sizes=(16, 16, 32, 32), fusion_hidden_size=16,
    )
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    folder = tmp_path_factory.mktemp("depth_anything")
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=28, patch_size=14,
        out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=(16, 16, 32, 32), fusion_hidden_size=16,
        head_hidden_size=8, patch_size=14,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    folder = tmp_path_factory.mktemp("segformer")
    config = SegformerConfig(
        num_labels=2, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, num_encoder_blocks=4,
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind,fixture", [("dpt", "tiny_dpt"), ("depth-anything", "tiny_depth_anything")])
def test_depth_labelers_return_maps_at_image_resolution(kind, fixture, request):
    labeler = load_depth_labeler(kind, checkpoint=request.getfixturevalue(fixture))
    depth = labeler(IMAGES)
    assert depth.shape == (3, 40, 48) and depth.dtype == np.float32 and np.isfinite(depth).all()
    assert labeler.target == "depth" and labeler.version.startswith(request.getfixturevalue(fixture) + "@config-")
    np.testing.assert_allclose(labeler(IMAGES[1:2])[0], depth[1], rtol=1e-4, atol=1e-4)  # per image, not per batch


def test_hf_saliency_labeler_is_a_probability(tiny_segformer):
    labeler = load_saliency_labeler("hf", checkpoint=tiny_segformer)
    prob = labeler(IMAGES)
    assert prob.shape == (3, 40, 48) and prob.min() >= 0 and prob.max() <= 1


def test_unknown_kinds_and_missing_checkpoint():
    with pytest.raises(UserError, match="unknown depth labeler 'midas'; choose one of toy, dpt, depth-anything"):
        load_depth_labeler("midas")
    with pytest.raises(UserError, match="needs a checkpoint"):
        load_saliency_labeler("hf")
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        load_depth_labeler("dpt", checkpoint="nobody/no-such-dpt")


def test_bad_images_are_rejected(tiny_dpt):
    labeler = load_depth_labeler("dpt", checkpoint=tiny_dpt)
    with pytest.raises(UserError, match="uint8 images"):
        labeler(IMAGES.astype(np.float32))


def test_toy_labelers_through_the_common_interface():
    from ldm.toy.render import render_batch

    batch = render_batch(list(range(1_000_000, 1_000_008)))
    saliency, depth = load_saliency_labeler("toy"), load_depth_labeler("toy")
    prob = saliency(batch.rgb)
    assert prob.shape == (8, 64, 64) and 0 <= prob.min() and prob.max() <= 1
    assert saliency.version.startswith("toy@") and depth.target == "depth"
    # nearer pixels (smaller z-depth) get larger relative inverse depth, as MiDaS reports it
    inv = depth(batch.rgb)
    assert np.corrcoef(inv.ravel(), -batch.depth.ravel())[0, 1] > 0.3


@pytest.fixture(scope="module")
def tiny_marigold(tmp_path_factory):
    from tests.tiny_pipelines import build_marigold_normals

    return str(build_marigold_normals(tmp_path_factory.mktemp("marigold")))


def test_marigold_normals_are_unit_vectors_per_image_at_image_resolution(tiny_marigold):
    labeler = load_normals_labeler("marigold", checkpoint=tiny_marigold, batch_size=2)
    normals = labeler(IMAGES)
    assert normals.shape == (3, 40, 48, 3) and normals.dtype == np.float32 and np.isfinite(normals).all()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-3)  # every pixel valid: no sky class
    assert labeler.target == "normals" and labeler.version.startswith(tiny_marigold + "@config-")
    # seeded per image: the same image gets the same normals alone or in a batch of two
    np.testing.assert_allclose(labeler(IMAGES[2:3])[0], normals[2], rtol=1e-4, atol=1e-4)
    assert not np.allclose(normals[0], normals[1])  # and they depend on the image
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        load_normals_labeler("marigold", checkpoint="nobody/no-such-marigold")
