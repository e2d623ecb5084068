"""Ray beyond one process: a simulated multi-node GPU cluster, `ray job submit` to a real local head, cluster.yaml."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

from workflows.demo import free_port, local_head
from workflows.config import PromptsConfig, RunConfig
from workflows.ray.generate import shard_runner
from workflows.stages.generate import generate
from workflows.store import completion_records, read_manifest

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def test_cluster_yaml_validates_against_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # also what `ray up` checks after filling in the provider's defaults
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 2 and t["max_workers"] >= 2 for t in workers)  # multi-GPU nodes
    broken = {**config, "available_node_types": {"head": {"resources": {"GPU": "four"}}}}
    with pytest.raises(jsonschema.ValidationError, match="node_config|four"):
        jsonschema.validate(broken, schema)  # the schema does reject bad configs


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text("prompts,seeds\n" + "".join(f'"a cube, number {i}",{300 + i}\n' for i in range(4)))
    return path


@pytest.mark.slow
def test_multi_node_gpu_cluster_spreads_actors(sd1_path, prompts_file, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1)  # GPU-like resources; actors fall back to the CPU device
    try:
        ray.init(address=cluster.address, logging_level="ERROR",
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}})
        cfg = RunConfig(model=str(sd1_path), steps=1, prompts=PromptsConfig(source="file", path=str(prompts_file)),
                        num_images=None, output=str(tmp_path / "run"), shard_size=1, batch_size=1, actors=None,
                        hooks=["mid_0"], progress_every=0.0)
        result = generate(cfg, run_shards=shard_runner(cfg))
        assert result.ok and result.images == 4
        nodes = {r["node"] for r in completion_records(cfg.output).values()}
        assert len(nodes) == 2  # one actor per simulated GPU, on each node
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_ray_job_submit_to_a_local_head(sd1_path, prompts_file, tmp_path):
    if shutil.which("ray", path=str(VENV_BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this interpreter")
    # An empty home folder, as on a machine that never ran Ray: no ~/.ray/auth_token for token authentication.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    extra = ("--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()))
    with local_head(num_cpus=1, env=env, extra_args=extra) as head:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "model": str(sd1_path), "steps": 1, "prompts": {"source": "file", "path": str(prompts_file)},
            "num_images": None, "shard_size": 2, "batch_size": 2, "hooks": ["mid_0"], "actors": 1,
            "stages": ["generate"]}))
        output = tmp_path / "run"
        job = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", head.url, "--working-dir", ".", "--",
             "python", "-m", "workflows.run", str(config), "--output", str(output)],
            cwd=REPO, env=head.env, capture_output=True, text=True, timeout=240)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout and "4/4 images complete" in job.stdout
    assert [r["status"] for r in read_manifest(str(output)).to_pylist()] == ["complete"] * 4
    assert zarr.open_group(str(output / "store.zarr"), mode="r")["images"].shape == (4, 32, 32, 3)
    assert not (home / ".ray").exists()  # the head's token lived in its own temporary folder


def test_a_head_that_does_not_come_up_is_one_error_with_its_own_output(tmp_path, capsys):
    """The head's own last lines, then one `error:` line; no traceback chain (here: a flag `ray start` refuses)."""
    if shutil.which("ray", path=str(VENV_BIN)) is None:
        pytest.skip("the ray CLI is not installed next to this interpreter")
    from ldm.errors import UserError

    with pytest.raises(UserError, match="the local Ray head exited with status"):
        with local_head(num_cpus=1, extra_args=("--no-such-flag",)):
            pass
    assert "no-such-flag" in capsys.readouterr().err


@pytest.mark.slow
def test_sceneprobe_generate_on_a_new_local_cluster_from_an_empty_home(sd1_path, prompts_file, tmp_path):
    """`sceneprobe generate CONFIG` without an address starts its own local Ray (token authentication on, as Ray
    defaults to) on a machine that never ran Ray, and prints no token warning."""
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(sd1_path), "steps": 1, "prompts": {"source": "file", "path": str(prompts_file)},
        "num_images": None, "shard_size": 2, "batch_size": 2, "hooks": ["mid_0"], "actors": 1,
        "output": str(tmp_path / "run")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    proc = subprocess.run([str(VENV_BIN / "python"), "-m", "workflows.cli", "generate", str(config)], cwd=REPO,
                          env={**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4/4 images complete" in proc.stderr and "Token authentication" not in proc.stderr
