"""The whole main job on SD 2.x- and SDXL-shaped pipelines (tiny random weights), every stage in-process."""

import pyarrow.parquet as pq
import pytest

from workflows.cli import main
from workflows.config import load_config


@pytest.fixture
def prompts_file(tmp_path):
    rows = [f"a red cube number {i},{i},{'test' if i % 4 == 0 else 'train'}" for i in range(12)]
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,seed,split\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("fixture,config", [("sd2_path", "configs/sd21.yaml"), ("sdxl_path", "configs/sdxl.yaml")])
def test_every_stage_runs_on_the_topology(fixture, config, request, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PAPER_SPLITS", str(tmp_path))
    load_config(config)  # the shipped config is valid
    model = request.getfixturevalue(fixture)
    out = tmp_path / "run"
    args = ["run", config, "--no-ray", "--output", str(out), "--set", f"model={model}", "--set", "dtype=float32",
            "--set", "prompts.train=null", "--set", "prompts.test=null", "--set", f"prompts.path={prompts_file}",
            "--set", "steps=2", "--set", "labels.depth.kind=toy", "--set", "labels.saliency.kind=toy",
            "--set", "labels.device=cpu", "--set", "probes.bootstrap=50",
            "--set", 'interventions={"max_images": 1, "targets": {"count": 1}, "iters": 2, "saliency_steps": [0], '
                     '"depth_steps": [0]}']
    assert main(args) == 0
    metrics = pq.read_table(out / "probes" / "metrics.parquet").to_pylist()
    hooks = {r["hook"] for r in metrics if r["variant"] == "ldm"}
    assert len(hooks) == (17 if fixture == "sd2_path" else 23)  # 16 / 22 self-attention outputs + latent
    assert (out / "interventions" / "summary.parquet").exists() and (out / "report" / "index.html").exists()
