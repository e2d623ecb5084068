import re

from workflows.cli import main


def test_hooks_table_from_configs_only(sd1_path, capsys):
    assert main(["hooks", str(sd1_path)]) == 0
    out = capsys.readouterr().out
    assert "up_3_2" in out and "16 self-attention hook points" in out and "vae_mid" in out


def test_hooks_table_sdxl(sdxl_path, capsys):
    assert main(["hooks", str(sdxl_path), "--height", "64", "--width", "64"]) == 0
    assert re.search(r"down_1_0_t1 +16x16 +16 +down_blocks.1.attentions.0.transformer_blocks.1", capsys.readouterr().out)
