import pytest
import torch

from ldm.errors import UserError
from ldm.hooks import find_unet_hook_points, level_size, select_hook_points
from ldm.loading import load_model

SD1_NAMES = (
    [f"down_{b}_{a}" for b in range(3) for a in range(2)] + ["mid_0"] + [f"up_{b}_{a}" for b in (1, 2, 3) for a in range(3)]
)


def _self_attention_modules(unet) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in unet.named_modules() if n.endswith("attn1")}


def test_sd1_hook_names_shapes_and_modules(sd1_path):
    model = load_model(str(sd1_path), steps=2)
    unet_points = [p for p in model.hook_points if p.kind == "unet"]
    assert [p.name for p in unet_points] == SD1_NAMES
    # every attn1 module is found exactly once, through its output projection
    assert sorted(p.module_path.removesuffix(".to_out.0") for p in unet_points) == sorted(_self_attention_modules(model.unet))
    res = {p.name: (p.height, p.width, p.channels) for p in unet_points}
    assert res["down_0_0"] == (16, 16, 8) and res["down_2_1"] == (4, 4, 16)
    assert res["mid_0"] == (2, 2, 16) and res["up_1_0"] == (4, 4, 16) and res["up_3_2"] == (16, 16, 8)
    assert [p.name for p in model.hook_points if p.kind == "extra"] == ["vae_mid", "latent", "x0"]


def test_sd2_linear_projection_topology(sd2_path):
    model = load_model(str(sd2_path), steps=2)
    names = [p.name for p in model.hook_points if p.kind == "unet"]
    assert names == SD1_NAMES
    assert model.unet.config.use_linear_projection


def test_sdxl_several_transformer_layers_per_block(sdxl_path):
    model = load_model(str(sdxl_path), steps=2)
    assert type(model.pipe).__name__ == "StableDiffusionXLPipeline"
    points = [p for p in model.hook_points if p.kind == "unet"]
    assert len(points) == len(_self_attention_modules(model.unet)) == 22
    assert "down_1_0_t1" in {p.name for p in points} and not any(p.name.startswith("down_0") for p in points)
    assert {(p.height, p.width) for p in points} == {(8, 8), (4, 4)}


def test_unknown_hook_lists_valid_names(sd1_path):
    model = load_model(str(sd1_path), steps=2)
    with pytest.raises(UserError, match="unknown hook point.*up_9_9.*valid names: down_0_0, down_0_1"):
        select_hook_points(model.hook_points, ["up_9_9"])


def test_cross_only_attention_is_not_a_hook_point(tmp_path):
    from tiny_pipelines import build_sd1

    build_sd1(tmp_path, attention="cross_only")
    model = load_model(str(tmp_path))
    assert [p.name for p in model.hook_points if p.kind == "unet"] == ["mid_0"]


def test_unet_without_self_attention_is_rejected(tmp_path):
    from tiny_pipelines import build_sd1

    build_sd1(tmp_path, attention="none")
    with pytest.raises(UserError, match="no self-attention"):
        load_model(str(tmp_path))


def test_level_size_rounds_up_like_stride_two_convs():
    assert [level_size(13, k) for k in range(4)] == [13, 7, 4, 2]


def test_hook_points_follow_non_square_sizes(sd1_path):
    model = load_model(str(sd1_path), steps=2, height=48, width=80)
    points = {p.name: p for p in find_unet_hook_points(model.unet, *model.latent_size)}
    assert model.latent_size == (24, 40)  # the tiny VAE downsamples by 2
    assert (points["down_0_0"].height, points["down_0_0"].width) == (24, 40)
    assert (points["mid_0"].height, points["mid_0"].width) == (3, 5)
