"""Dataclass configs from YAML: unknown keys are errors that list the valid ones; ``a.b=v`` overrides."""
from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from .errors import PeaceError, unknown

T = TypeVar("T")


def checked(cls: type[T], d: Any, where: str) -> T:
    """``cls(**d)`` after checking that ``d`` is a mapping with only known keys and every required one."""
    if not isinstance(d, dict):
        raise PeaceError(f"{where} must be a mapping, got {type(d).__name__}")
    valid = [f.name for f in fields(cls)]
    for k in d:
        if k not in valid:
            raise unknown(f"key in {where}", k, valid)
    missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise PeaceError(f"{where} is missing required key(s) {missing}")
    return cls(**d)


def read_yaml(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PeaceError(f"{what} file {path} does not exist")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PeaceError(f"{what} file {path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise PeaceError(f"{what} file {path} must hold a mapping")
    return d


def apply_overrides(d: dict, overrides: list[str] | dict[str, Any], cls: type | None = None) -> dict:
    """A copy of nested dict ``d`` with ``section.key=value`` overrides (values parsed as YAML).

    With ``cls`` (a dataclass of dataclass sections) every dotted key is checked against it first.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key, value in items:
        parts = key.split(".")
        if cls is not None:
            _check_path(cls, parts, key)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _split(o: str) -> tuple[str, Any]:
    if "=" not in o:
        raise PeaceError(f"override {o!r} must look like section.key=value, e.g. train.epochs=5")
    k, v = o.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def _check_path(cls: type, parts: list[str], key: str) -> None:
    for i, p in enumerate(parts):
        if cls is None or not is_dataclass(cls):
            raise PeaceError(f"override {key!r}: {'.'.join(parts[:i])} is not a section")
        hints = get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        if p not in names:
            raise unknown(f"config key in override {key!r}", p, names)
        cls = hints[p] if is_dataclass(hints[p]) else None
    if is_dataclass(cls):
        raise PeaceError(f"override {key!r} names a whole section; name one of its keys")
