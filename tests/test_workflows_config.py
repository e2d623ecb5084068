from pathlib import Path

import pytest

from workflows.config import ConfigError, RunConfig, data_differences, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_toy_config_is_the_default_run():
    cfg = load_config(REPO / "configs" / "toy.yaml")
    assert (cfg.model, cfg.steps, cfg.num_images, cfg.prompts.source) == ("toy", 15, 96, "toy")
    assert cfg.shard_size % cfg.batch_size == 0 and cfg.extras == ["latent"]


def test_shipped_paper_config_has_the_papers_settings(monkeypatch):
    monkeypatch.setenv("PAPER_SPLITS", "/data/splits")
    cfg = load_config(REPO / "configs" / "paper-sd14.yaml")
    assert cfg.model == "CompVis/stable-diffusion-v1-4" and cfg.scheduler == "lms"
    assert (cfg.steps, cfg.guidance_scale, cfg.num_images) == (15, 7.5, None)
    assert cfg.prompts.train == "/data/splits/train_split_prompts_seeds.csv"
    assert cfg.prompts.test == "/data/splits/test_split_prompts_seeds.csv"


def test_toml_and_overrides(tmp_path):
    path = write(tmp_path, 'model = "toy"\nsteps = 5\n[prompts]\nfirst_seed = 3\n', "run.toml")
    cfg = load_config(path, ["num_images=8", "prompts.first_seed=7", "hooks=[up_1_0, mid_0]"])
    assert (cfg.steps, cfg.num_images, cfg.prompts.first_seed, cfg.hooks) == (5, 8, 7, ["up_1_0", "mid_0"])


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'shards_size'.*shard_size"):
        load_config(write(tmp_path, "shards_size: 4\n"))
    with pytest.raises(ConfigError, match=r"'prompts.file'.*valid keys in prompts: source, path"):
        load_config(write(tmp_path, "prompts: {file: a.csv}\n"))


@pytest.mark.parametrize("text,message", [
    ("shard_size: 0\n", "shard_size must be >= 1"),
    ("shard_size: 6\nbatch_size: 4\n", "must be >= 1 and divide shard_size"),
    ("steps: fifteen\n", "steps: expected an integer"),
    ("compression: brotli\n", "compression: 'brotli' is not one of lz4, zstd, none"),
    ("extras: [latent, noise]\n", "extras: 'noise' is not one of"),
    ("prompts: {source: file}\n", "needs prompts.path, or both prompts.train and prompts.test"),
    ("num_images: null\n", "num_images is required with prompts.source 'toy'"),
])
def test_bad_values_name_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_only_data_fields_count_as_differences():
    a, b = RunConfig(), RunConfig(actors=4, max_retries=0, output="elsewhere")
    assert data_differences(a, b) == []
    b.steps, b.prompts.first_seed = 10, 5
    assert data_differences(a, b) == ["prompts.first_seed", "steps"]


def test_the_interventions_section_is_typed_and_round_trips():
    from workflows.config import InterventionConfig, TargetSpec, from_dict, to_dict

    cfg = from_dict({"interventions": {"saliency_hooks": "all", "calibrate": {"saliency": [8, 16]},
                                       "targets": {"count": 2}, "tasks": ["saliency"]}})
    icfg = cfg.interventions
    assert isinstance(icfg, InterventionConfig) and isinstance(icfg.targets, TargetSpec)
    assert icfg.saliency_hooks == "all" and icfg.calibrate == {"saliency": [8.0, 16.0]} and icfg.tasks == ("saliency",)
    stored = to_dict(cfg)
    assert "chosen" not in stored["interventions"]  # set by the calibration, never part of a config
    assert from_dict(stored) == cfg
    with pytest.raises(ConfigError, match=r"interventions.saliency_hooks: expected a list or a string or null"):
        from_dict({"interventions": {"saliency_hooks": 3}})
    with pytest.raises(ConfigError, match=r"interventions.calibrate.saliency\[1\]: expected a number"):
        from_dict({"interventions": {"calibrate": {"saliency": [8, "x"]}}})
