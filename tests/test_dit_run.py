"""The whole run (generate -> controls -> label -> probe -> intervene -> report) on SD3-, Flux- and PixArt-shaped
pipelines (tiny random weights), every stage in-process; the shipped DiT configs; the run's DiT defaults."""

import pyarrow.parquet as pq
import pytest

from ldm.errors import UserError
from workflows.cli import main
from workflows.config import default_hooks, load_config
from workflows.report.page import hook_order

DIT_CONFIGS = [("sd3_path", "configs/sd3.yaml"), ("flux_path", "configs/flux.yaml"),
               ("pixart_path", "configs/pixart.yaml")]
# the tiny pipelines' blocks (tests/tiny_pipelines.py): SD3 3 joint blocks (x2 points), Flux 2 double + 2 single, PixArt 3
TINY_HOOKS = {"sd3_path": ["joint_0", "joint_0_out", "joint_1", "joint_1_out", "joint_2", "joint_2_out"],
              "flux_path": ["double_0", "double_1", "single_0", "single_1"],
              "pixart_path": ["block_0", "block_1", "block_2"]}


@pytest.fixture
def prompts_file(tmp_path):
    rows = [f"a red cube number {i},{i},{'test' if i % 4 == 0 else 'train'}" for i in range(12)]
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,seed,split\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fixture,config", DIT_CONFIGS)
def test_every_stage_runs_on_the_transformer(fixture, config, request, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_SPLITS", str(tmp_path))
    load_config(config)  # the shipped config is valid
    model = request.getfixturevalue(fixture)
    out = tmp_path / "run"
    args = ["run", config, "--no-ray", "--output", str(out), "--set", f"model={model}", "--set", "dtype=float32",
            "--set", "height=32", "--set", "width=32",
            "--set", "prompts.train=null", "--set", "prompts.test=null", "--set", f"prompts.path={prompts_file}",
            "--set", "steps=2", "--set", "labels.depth.kind=toy", "--set", "labels.saliency.kind=toy",
            "--set", "labels.device=cpu", "--set", "probes.bootstrap=50",
            "--set", 'interventions={"max_images": 1, "targets": {"count": 1}, "iters": 2, "saliency_steps": [0], '
                     '"depth_steps": [0]}']
    assert main(args) == 0
    metrics = pq.read_table(out / "probes" / "metrics.parquet").to_pylist()
    hooks = {r["hook"] for r in metrics if r["variant"] == "ldm"}
    assert hooks == set(TINY_HOOKS[fixture]) | {"latent"}
    assert {r["variant"] for r in metrics} >= {"ldm", "permuted"}  # the permuted-weights control ran on the DiT too
    summary = pq.read_table(out / "interventions" / "summary.parquet").to_pylist()
    assert {r["task"] for r in summary} >= {"saliency", "depth"}
    page = (out / "report" / "index.html").read_text()
    shown = [h for h in TINY_HOOKS[fixture] if h in page]
    assert shown and sorted(shown, key=lambda h: page.index(h)) == shown  # hooks appear in the network's own order


def test_hook_order_is_the_networks_forward_order():
    flux = ["single_0", "double_1", "latent", "single_10", "double_0", "single_2"]
    assert sorted(flux, key=hook_order) == ["double_0", "double_1", "single_0", "single_2", "single_10", "latent"]
    sd3 = ["joint_1_out", "joint_10", "joint_1", "joint_0_out", "joint_2"]
    assert sorted(sd3, key=hook_order) == ["joint_0_out", "joint_1", "joint_1_out", "joint_2", "joint_10"]
    unet = ["up_0_0", "mid_0", "down_2_1", "down_0_0"]
    assert sorted(unet, key=hook_order) == ["down_0_0", "down_2_1", "mid_0", "up_0_0"]


def test_default_intervention_hooks_on_transformers():
    flux = [f"double_{k}" for k in range(19)] + [f"single_{k}" for k in range(38)]
    saliency = default_hooks("saliency", list(reversed(flux)))
    assert saliency == flux[28:] and len(default_hooks("depth", flux)) == 57  # the later half, in forward order
    sd3 = [n for k in range(4) for n in (f"joint_{k}", f"joint_{k}_out")]
    assert default_hooks("saliency", sd3) == ["joint_2", "joint_3"]  # attention outputs only: no block edited twice
    assert default_hooks("depth", sd3) == ["joint_0", "joint_1", "joint_2", "joint_3"]
    assert default_hooks("saliency", ["block_0", "block_1", "block_2"]) == ["block_1", "block_2"]
    unet = ["down_0_0", "mid_0", "up_1_0", "up_1_1"]
    assert default_hooks("saliency", unet) == ["up_1_0", "up_1_1"] and default_hooks("depth", unet) == unet


@pytest.mark.parametrize("config,hooks,last", [("configs/sd3.yaml", 48, "joint_23_out"),
                                               ("configs/flux.yaml", 57, "single_37"),
                                               ("configs/pixart.yaml", 28, "block_27")])
def test_plan_sizes_the_shipped_dit_configs(config, hooks, last, tmp_path, monkeypatch, capsys):
    """`sceneprobe plan` from the shipped published configs alone (no weights, no network), at 1024 px."""
    from workflows.report.plan import plan_run

    for split, n in (("train", 6), ("test", 2)):
        rows = "\n".join(f"a {split} cat {i},{i}" for i in range(n))
        (tmp_path / f"{split}_split_prompts_seeds.csv").write_text(f"prompt,seed\n{rows}\n")
    monkeypatch.setenv("PAPER_SPLITS", str(tmp_path))
    cfg = load_config(config)
    plan = plan_run(cfg)
    acts = [a for a in plan.arrays if a.name.startswith("acts/") and a.name != "acts/latent"]
    assert len(acts) == hooks and acts[-1].name == f"acts/{last}"
    assert all(a.shape[:4] == (8, cfg.steps, 64, 64) for a in acts)  # 1024 px = 64x64 tokens in every family
    assert plan.arrays[0].shape == (8, 1024, 1024, 3)
    assert main(["plan", config]) == 0
    printed = capsys.readouterr().out
    assert f"acts/{last} " in printed and "(8, 1024, 1024, 3)" in printed


def test_a_noise_schedule_on_a_flow_matching_model_is_refused_before_any_actor(sd3_path, tmp_path, monkeypatch):
    from workflows.pipeline import run_pipeline

    # the map targets only: the toy config's normals and light have no labeler for SD3's images (its own error)
    cfg = load_config("configs/toy.yaml", overrides=[f"model={sd3_path}", "scheduler=lms",
                                                     "probes.targets=[saliency, depth]", f"output={tmp_path / 'run'}"])
    monkeypatch.setattr("workflows.pipeline.run_stages", lambda *a, **k: pytest.fail("a stage started"))
    with pytest.raises(UserError, match="scheduler 'lms' cannot run this model.*flow-matching.*flow_euler"):
        run_pipeline(cfg, use_ray=True)
    hub = load_config("configs/sd3.yaml", overrides=["scheduler=euler", f"output={tmp_path / 'hub'}"])
    with pytest.raises(UserError, match="scheduler 'euler' cannot run"):  # from the shipped model_index.json alone
        run_pipeline(hub, stages=("generate",), use_ray=True)


def test_caption_control_reads_sd3s_own_pooled_projection(sd3_path):
    """SD3's first text encoder is a CLIPTextModelWithProjection: the caption feature is the pooled projection the
    pipeline itself conditions on (not a CLIPTextModel read from the same folder, whose weights would not match)."""
    import torch
    from diffusers import StableDiffusion3Pipeline

    from ldm.captions import caption_embeddings

    prompts = ["a red cube", "a blue sphere on a floor"]
    emb = caption_embeddings(str(sd3_path), prompts)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_path))
    with torch.no_grad():
        _, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    first = pipe.text_encoder.config.projection_dim
    assert emb.shape == (2, first)
    assert torch.allclose(torch.from_numpy(emb), pooled[:, :first], atol=1e-5)


def test_caption_control_pools_pixarts_t5_over_real_tokens(pixart_path):
    """PixArt's text encoder is T5 (no pooled output): the feature is the mean hidden state of the prompt's own
    tokens, the same as running T5 on the unpadded prompt."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    from ldm.captions import caption_embeddings

    prompts = ["red", "a blue cube"]  # within the tiny tokenizer's 16 tokens: truncation is not what is tested
    emb = caption_embeddings(str(pixart_path), prompts)
    tokenizer = AutoTokenizer.from_pretrained(str(pixart_path), subfolder="tokenizer")
    t5 = T5EncoderModel.from_pretrained(str(pixart_path), subfolder="text_encoder").eval()
    assert emb.shape == (2, t5.config.d_model)
    for row, prompt in zip(emb, prompts):
        ids = tokenizer([prompt], return_tensors="pt").input_ids  # no padding at all
        with torch.no_grad():
            unpadded = t5(ids).last_hidden_state[0].mean(0).numpy()
        assert abs(row - unpadded).max() < 1e-5
    assert abs(emb[0] - emb[1]).max() > 1e-3
