"""The smallest toy-model run configs the store tests generate from (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {"model": "toy", "steps": 1, "num_images": 4, "test_fraction": 0.5, "hooks": ["mid_0"], "shard_size": 2,
        "batch_size": 2, "actors": 1, "progress_every": 0, "stages": ["generate"]}


def toy_config(tmp_path: Path, **fields) -> tuple[str, Path]:
    """(config path, output folder) of a TINY run under `tmp_path`, with `fields` overriding it."""
    output = tmp_path / "out"
    config = tmp_path / "run.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({**TINY, "output": str(output), **fields}))
    return str(config), output
