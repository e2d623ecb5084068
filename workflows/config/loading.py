"""Reading a run config: one YAML or TOML file, `--set key=value` overrides, every field validated.

A bad key names the key and lists the valid ones, a bad value names the field and what it accepts, a file that does
not parse names its line and column.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import yaml

from workflows.config.run_config import RunConfig, validate
from workflows.config.schema import ConfigError, build, to_dict


def from_dict(data: dict[str, Any]) -> RunConfig:
    return validate(build(RunConfig, data))


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", value parsed as YAML, so numbers, lists and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) run config, apply `key=value` overrides, expand $VARS in paths."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    data = data or {}
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    cfg = from_dict(data)
    for name in ("path", "train", "test"):
        value = getattr(cfg.prompts, name)
        if value:
            setattr(cfg.prompts, name, os.path.expandvars(os.path.expanduser(value)))
    cfg.output = os.path.expandvars(os.path.expanduser(cfg.output))
    return cfg


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line that names the line and column, e.g. "line 3, column 11: expected ','
    or ']', but got ':' (in the list that starts on line 2)"."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    where = f" ({context} on line {start.line + 1})" if context and start is not None else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}{where}"


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
