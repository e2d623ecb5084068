"""Hook points of diffusion transformers (SD3, Flux, PixArt): names, modules, token grids, offline tables, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from ldm.architecture import describe_hook_points, empty_denoiser
from ldm.capture import ArraySink, capture
from ldm.denoisers import denoiser_family, pack_latent, unpack_latent
from ldm.errors import UserError
from ldm.hooks import HookPoint, as_spatial, select_hook_points
from ldm.loading import load_model

FLOW = "flow_euler"


@pytest.fixture(scope="module")
def sd3(sd3_path):
    return load_model(str(sd3_path), scheduler=FLOW, steps=2)


@pytest.fixture(scope="module")
def flux(flux_path):
    return load_model(str(flux_path), scheduler=FLOW, steps=2, height=32, width=32)


@pytest.fixture(scope="module")
def pixart(pixart_path):
    return load_model(str(pixart_path), scheduler="ddim", steps=2)


def _denoiser_points(model):
    return [p for p in model.hook_points if p.kind != "extra"]


def test_sd3_joint_blocks_attention_and_block_output(sd3):
    points = _denoiser_points(sd3)
    assert [p.name for p in points] == ["joint_0", "joint_0_out", "joint_1", "joint_1_out", "joint_2", "joint_2_out"]
    modules = dict(sd3.denoiser.named_modules())
    # every joint attention's output projection once, and every block once
    assert sorted(p.module_path for p in points if not p.name.endswith("_out")) == sorted(
        n for n in modules if n.endswith("attn.to_out.0"))
    assert [p.module_path for p in points if p.name.endswith("_out")] == [f"transformer_blocks.{k}" for k in range(3)]
    assert {(p.height, p.width, p.channels, p.patch, p.kind) for p in points} == {(8, 8, 16, 2, "transformer")}
    assert sd3.latent_size == (16, 16)  # 32 px through the tiny 2x VAE; patch 2 -> 8x8 tokens
    assert [(p.name, p.channels) for p in sd3.hook_points if p.kind == "extra"] == [
        ("vae_mid", 16), ("latent", 16), ("x0", 16)]  # SD3's 16-channel latent


def test_flux_double_and_single_stream_blocks(flux):
    points = _denoiser_points(flux)
    assert [p.name for p in points] == ["double_0", "double_1", "single_0", "single_1"]
    assert [p.module_path for p in points] == [
        "transformer_blocks.0.attn.to_out.0", "transformer_blocks.1.attn.to_out.0",
        "single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.proj_out"]
    assert [p.take for p in points] == ["all", "all", "image_tail", "image_tail"]
    # patch_size 1 in the config, but the pipeline packs 2x2 latent pixels per token
    assert {(p.height, p.width, p.channels, p.patch) for p in points} == {(8, 8, 32, 2)}


def test_pixart_block_self_attention(pixart):
    points = _denoiser_points(pixart)
    assert [p.name for p in points] == ["block_0", "block_1", "block_2"]
    assert [p.module_path for p in points] == [f"transformer_blocks.{k}.attn1.to_out.0" for k in range(3)]
    assert {(p.height, p.width, p.channels) for p in points} == {(8, 8, 16)}
    assert [p.channels for p in pixart.hook_points if p.name == "latent"] == [4]


@pytest.mark.parametrize("name", ["sd3", "pixart", "flux"])
def test_tokens_map_back_to_the_latent_grid(name, request):
    """A change at one latent pixel (y, x) reaches only token (y // patch, x // patch) of the patch embedding, and
    `as_spatial` puts that token at that grid cell: row-major tokens, the patch size and Flux's 2x2 packing."""
    model = request.getfixturevalue(name)
    point = _denoiser_points(model)[0]
    latent = torch.randn(1, model.denoiser.config.in_channels if name != "flux" else 16, 16, 16)
    moved = latent.clone()
    moved[0, :, 11, 5] += 1.0
    if name == "flux":
        embed = lambda z: model.denoiser.x_embedder(pack_latent(z))  # noqa: E731
    else:
        embed = model.denoiser.pos_embed
    with torch.no_grad():
        before, after = (as_spatial(embed(z), point, (16, 16)) for z in (latent, moved))  # (1, 8, 8, c)
    changed = (after - before).abs().amax(dim=-1)[0] > 0
    assert changed.nonzero().tolist() == [[11 // 2, 5 // 2]]


def test_flux_packing_matches_the_pipeline(flux):
    latent = torch.randn(2, 16, 6, 10)
    packed = pack_latent(latent)
    torch.testing.assert_close(packed, flux.pipe._pack_latents(latent, 2, 16, 6, 10), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latent(packed, (6, 10)), latent, rtol=0, atol=0)
    # the pipeline's position ids agree: token n sits at row n // w, column n % w of the packed grid
    ids = flux.pipe._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    assert ids[:, 1:].tolist() == [[n // 5, n % 5] for n in range(15)]


def test_non_square_sizes_follow_the_patch_grid(flux_path):
    wide = load_model(str(flux_path), scheduler=FLOW, steps=1, height=32, width=64)
    assert {(p.height, p.width) for p in _denoiser_points(wide)} == {(8, 16)}
    # 1032 px is 129 latent pixels through SD3's 8x VAE: no whole number of 2x2 patches
    with pytest.raises(UserError, match=r"a 128x129 latent does not split into 2x2 patches.*\(16 px"):
        describe_hook_points("stabilityai/stable-diffusion-3-medium-diffusers", 1024, 1032)


def test_published_transformer_tables_offline():
    sd3 = [p for p in describe_hook_points("stabilityai/stable-diffusion-3-medium-diffusers") if p.kind != "extra"]
    assert len(sd3) == 2 * 24 and sd3[0].name == "joint_0" and sd3[-1].name == "joint_23_out"
    assert {(p.height, p.width, p.channels) for p in sd3} == {(64, 64, 1536)}  # 1024 px / 8 / patch 2; 24 x 64
    flux = [p for p in describe_hook_points("black-forest-labs/FLUX.1-dev") if p.kind != "extra"]
    assert [p.name for p in flux] == [f"double_{k}" for k in range(19)] + [f"single_{k}" for k in range(38)]
    assert {(p.height, p.width, p.channels) for p in flux} == {(64, 64, 3072)}  # 1024 px / 8 / 2x2 packing; 24 x 128
    pixart = describe_hook_points("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")  # published as legacy Transformer2DModel
    assert [p.name for p in pixart if p.kind != "extra"] == [f"block_{k}" for k in range(28)]
    assert {(p.height, p.channels) for p in pixart if p.kind != "extra"} == {(64, 1152)}  # 16 heads x 72
    extras = {p.name: (p.height, p.channels) for p in pixart if p.kind == "extra"}
    assert extras == {"vae_mid": (128, 512), "latent": (128, 4), "x0": (128, 4)}
    wide = describe_hook_points("black-forest-labs/FLUX.1-dev", 768, 1344)
    assert (wide[0].height, wide[0].width) == (48, 84)


def test_hook_name_of_another_family_lists_the_valid_names(flux, sd1_path):
    with pytest.raises(UserError, match=r"unknown hook point\(s\) up_1_0 \(a U-Net hook point name; this model is a "
                                        r"Flux transformer\); valid names: double_0, double_1, single_0"):
        select_hook_points(flux.hook_points, ["up_1_0"])
    with pytest.raises(UserError, match="up_1_0.*U-Net.*valid names: double_0"):
        with capture(flux, ArraySink(), hooks=["up_1_0"]):
            pass
    unet = load_model(str(sd1_path), steps=1)
    with pytest.raises(UserError, match=r"joint_3 \(an SD3 transformer hook point name; this model is a U-Net\); "
                                        r"valid names: down_0_0"):
        with capture(unet, ArraySink(), hooks=["joint_3"]):
            pass


def test_unsupported_denoiser_names_the_supported_ones(sd3_path, tmp_path):
    supported = "UNet2DConditionModel.*SD3Transformer2DModel.*FluxTransformer2DModel.*PixArtTransformer2DModel"
    with pytest.raises(UserError, match=f"denoiser class Linear is not supported; sceneprobe reads {supported}"):
        denoiser_family(torch.nn.Linear(2, 2))
    # a checkpoint whose transformer is another diffusers class: refused from model_index.json, before any weights
    folder = tmp_path / "other"
    shutil.copytree(sd3_path, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "HunyuanDiT2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "transformer")  # would fail differently if its weights were read
    with pytest.raises(UserError, match=f"denoiser class HunyuanDiT2DModel is not supported; sceneprobe reads {supported}"):
        load_model(str(folder), scheduler=FLOW)
    with pytest.raises(UserError, match="denoiser class NotADiffusersModel is not supported"):
        empty_denoiser({"_class_name": "NotADiffusersModel"})
    with pytest.raises(UserError, match="DiTTransformer2DModel is not supported"):  # a diffusers DiT we do not read
        empty_denoiser({"_class_name": "DiTTransformer2DModel", "num_layers": 1, "sample_size": 8})


def test_scheduler_that_cannot_run_the_model_is_refused(sd3_path, sd1_path):
    with pytest.raises(UserError, match=r"scheduler 'lms' cannot run this model \(FlowMatchEulerDiscreteScheduler: "
                                        r"a flow-matching model\); choose flow_euler"):
        load_model(str(sd3_path), scheduler="lms")
    with pytest.raises(UserError, match="'flow_euler' cannot run this model.*choose lms or ddim or euler or pndm"):
        load_model(str(sd1_path), scheduler=FLOW)


def test_hook_point_defaults_keep_unet_behaviour():
    point = HookPoint("mid_0", "mid_block", 2, 2, 16, level=3)
    assert (point.kind, point.patch, point.take) == ("unet", 1, "all")


def test_sd35_dual_attention_blocks(tmp_path):
    """SD3.5's first blocks add an image-only self-attention (`attn2`): the points stay the joint attention and the
    block output, which includes it; capture and an identity edit stay exact."""
    from tiny_pipelines import build_sd3

    model = load_model(str(build_sd3(tmp_path, dual_attention_layers=(0, 1))), scheduler=FLOW, steps=2)
    assert model.denoiser.transformer_blocks[0].attn2 is not None
    points = _denoiser_points(model)
    assert [p.name for p in points][:2] == ["joint_0", "joint_0_out"] and len(points) == 6
    reference = model.generate(["a red sphere"], [1])
    sink = ArraySink()
    with capture(model, sink, extras=()):
        np.testing.assert_array_equal(model.generate(["a red sphere"], [1]), reference)
    assert sink.arrays["joint_0_out"].shape == (1, 2, 8, 8, 16)


def test_pixart_published_as_legacy_transformer2dmodel(pixart_path, tmp_path):
    """PixArt-Sigma's hub folder names its transformer `Transformer2DModel`; diffusers loads it as a
    `PixArtTransformer2DModel` (by its norm_type), and so does sceneprobe."""
    folder = tmp_path / "legacy"
    shutil.copytree(pixart_path, folder)
    for path, key in ((folder / "model_index.json", "transformer"), (folder / "transformer" / "config.json", None)):
        config = json.loads(path.read_text())
        if key:
            config[key] = ["diffusers", "Transformer2DModel"]
        else:
            config["_class_name"] = "Transformer2DModel"
        path.write_text(json.dumps(config))
    model = load_model(str(folder), scheduler="ddim", steps=1)
    assert model.family == "pixart" and [p.name for p in _denoiser_points(model)] == ["block_0", "block_1", "block_2"]
