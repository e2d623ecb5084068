import re

from workflows.cli import main


def test_hooks_table_from_configs_only(sd1_path, capsys):
    assert main(["hooks", str(sd1_path)]) == 0
    out = capsys.readouterr().out
    assert "up_3_2" in out and "16 self-attention hook points" in out and "vae_mid" in out


def test_hooks_table_sdxl(sdxl_path, capsys):
    assert main(["hooks", str(sdxl_path), "--height", "64", "--width", "64"]) == 0
    assert re.search(r"down_1_0_t1 +16x16 +16 +down_blocks.1.attentions.0.transformer_blocks.1", capsys.readouterr().out)


def test_hooks_tables_of_diffusion_transformers(flux_path, capsys):
    """Published configs ship in ldm/architectures/, so these print offline; a local folder is read as well."""
    assert main(["hooks", "stabilityai/stable-diffusion-3-medium-diffusers"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"joint_23_out +64x64 +1536 +transformer_blocks.23\n", out)
    assert "48 transformer hook points; extras: vae_mid, latent, x0" in out
    assert main(["hooks", "black-forest-labs/FLUX.1-dev", "--height", "512", "--width", "768"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"single_37 +32x48 +3072 +single_transformer_blocks.37.proj_out\n", out)
    assert "57 transformer hook points" in out
    assert main(["hooks", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"]) == 0
    assert re.search(r"block_27 +64x64 +1152 +transformer_blocks.27.attn1.to_out.0\n", capsys.readouterr().out)
    assert main(["hooks", str(flux_path), "--height", "32", "--width", "32"]) == 0
    assert re.search(r"double_1 +8x8 +32 +transformer_blocks.1.attn.to_out.0\n", capsys.readouterr().out)
