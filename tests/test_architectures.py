"""Hook tables of the published SD architectures, from their configs alone (no weights)."""

from ldm.architecture import describe_hook_points

PAPER_TABLE = {  # paper-method.md: block -> (layers, channels, resolution at 512 px)
    "down_0": (2, 320, 64), "down_1": (2, 640, 32), "down_2": (2, 1280, 16), "mid": (1, 1280, 8),
    "up_1": (3, 1280, 16), "up_2": (3, 640, 32), "up_3": (3, 320, 64),
}


def test_sd14_matches_the_papers_layer_table():
    points = [p for p in describe_hook_points("CompVis/stable-diffusion-v1-4") if p.kind == "unet"]
    assert len(points) == 16
    for block, (layers, channels, res) in PAPER_TABLE.items():
        mine = [p for p in points if p.name.rsplit("_", 1)[0] == block]
        assert len(mine) == layers, block
        assert {(p.height, p.width, p.channels) for p in mine} == {(res, res, channels)}, block
    # 11.55 M values per image per step over the 16 layers (paper-method.md)
    assert sum(p.height * p.width * p.channels for p in points) == 11_550_720
    vae = next(p for p in describe_hook_points("CompVis/stable-diffusion-v1-4") if p.name == "vae_mid")
    assert (vae.height, vae.width, vae.channels) == (64, 64, 512)


def test_sd21_and_sdxl_topologies():
    sd21 = [p for p in describe_hook_points("stabilityai/stable-diffusion-2-1") if p.kind == "unet"]
    assert len(sd21) == 16 and sd21[0].height == 96  # 768 px native
    xl = [p for p in describe_hook_points("stabilityai/stable-diffusion-xl-base-1.0") if p.kind == "unet"]
    assert len(xl) == 2 * 2 + 2 * 10 + 10 + 3 * 2 + 3 * 10  # down_1, down_2, mid, up_0 (x10), up_1 (x2)
    assert {p.name for p in xl} >= {"down_1_0_t1", "mid_0_t9", "up_0_2_t9", "up_1_2_t1"}
    assert {(p.height, p.channels) for p in xl} == {(64, 640), (32, 1280)}
