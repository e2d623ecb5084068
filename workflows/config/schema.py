"""How a config file maps onto the config dataclasses: one rule for every section.

`build(cls, data)` makes a dataclass from a parsed mapping, field by field against its annotations: an unknown key names
itself and lists the valid ones, a value of the wrong kind names the field and what it accepts, nested dataclasses
are built the same way. `to_dict` is the inverse (plain lists and dicts, ready for YAML and JSON). A field marked
`state()` belongs to the stage that computes it, not to the user: `build` refuses it and `to_dict` leaves it out.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ldm.errors import UserError


class ConfigError(UserError):
    """A config file or value that cannot be used; the message says which field and why."""


def state(default_factory, by: str) -> Any:
    """A dataclass field that a stage sets (`by`, e.g. the calibration), never a config file."""
    return dataclasses.field(default_factory=default_factory, metadata={"state": by})


def _is_state(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("state"))


def coerce(name: str, value: Any, typ: Any) -> Any:
    """Check `value` against the annotation `typ` (the few kinds a config uses) and return it, converted if harmless.
    A union takes the first alternative the value fits, in the order written."""
    origin = typing.get_origin(typ)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:  # `X | None`: X's own message is the precise one
            return coerce(name, value, alternatives[0])
        for alternative in alternatives:
            try:
                return coerce(name, value, alternative)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: expected {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = typing.get_args(typ)[0]
        items = [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(typ)
        return {coerce(f"{name}.{k}", k, key_type): coerce(f"{name}.{k}", v, value_type) for k, v in value.items()}
    if dataclasses.is_dataclass(typ):
        return value if isinstance(value, typ) else build(typ, value, name + ".")
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {typ!r} for {name}")


def _describe(typ: Any) -> str:
    origin = typing.get_origin(typ) or typ
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             tuple: "a list", dict: "a mapping", type(None): "null"}
    return "a mapping" if dataclasses.is_dataclass(typ) else names.get(origin, str(typ))


def build(cls, data: dict[str, Any], prefix: str = ""):
    """`cls(**data)` with every key and value checked (see the module docstring)."""
    section = prefix.rstrip(".")
    if not isinstance(data, dict):
        raise ConfigError(f"{section or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = [name for name, f in fields.items() if not _is_state(f)]
    kwargs = {}
    for key, value in data.items():
        name = prefix + str(key)
        if key in fields and _is_state(fields[key]):
            raise ConfigError(f"{name!r} is set by {fields[key].metadata['state']}, not in a config; valid keys"
                              f"{' in ' + section if section else ''}: {', '.join(valid)}")
        if key not in fields:
            raise ConfigError(f"unknown config key {name!r}; valid keys{' in ' + section if section else ''}: "
                              + ", ".join(valid))
        kwargs[key] = coerce(name, value, hints[key])
    return cls(**kwargs)


def to_dict(obj) -> dict[str, Any]:
    """A config dataclass as plain data (lists, dicts, numbers, strings), without its stage-set fields."""
    out = {}
    for f in dataclasses.fields(obj):
        if not _is_state(f):
            out[f.name] = _plain(getattr(obj, f.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict with dotted keys: {"probes": {"mode": "ours"}} -> {"probes.mode": "ours"}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
