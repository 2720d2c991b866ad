"""Dataclass configs from YAML: unknown keys and values of the wrong type are errors that say what is
valid; ``a.b=v`` overrides; YAML is read with a size limit and a bound on what aliases expand to."""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from peace.core.errors import PeaceError, unknown

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_NODES", "T", "apply_overrides", "checked", "parse_yaml", "read_yaml"]

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
    hints = get_type_hints(cls)
    for k, v in d.items():
        if not is_dataclass(hints[k]) and not _fits(v, hints[k]):
            raise PeaceError(f"{where}: {k!r} must be {_describe(hints[k])}, got {v!r:.80} ({type(v).__name__})")
    try:
        return cls(**d)
    except (TypeError, ValueError, OverflowError) as e:  # a value the dataclass itself refuses
        if isinstance(e, PeaceError):
            raise PeaceError(f"{where}: {e}") from None
        raise PeaceError(f"{where}: invalid value ({e})") from None


def _fits(v: Any, hint: Any) -> bool:
    """Whether a parsed YAML/JSON value has the type a dataclass field declares (ints pass as floats)."""
    if hint is Any or isinstance(hint, TypeVar):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint in (str, Path):
        return isinstance(v, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return not inner or all(_fits(x, inner[0]) for x in v)
    if origin is dict or hint is dict:
        return isinstance(v, dict) and (not args or all(_fits(x, args[1]) for x in v.values()))
    return True  # other annotations are left to the dataclass


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_describe(inner[0])}" if inner else "a list"
    names = {int: "an integer", float: "a number", str: "text", bool: "true or false", type(None): "null",
             dict: "a mapping", list: "a list", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # values after aliases are expanded: a "billion laughs" file is refused


def _expanded_size(obj: Any, seen: dict, limit: int) -> int:
    """How many values ``obj`` holds with every alias expanded (memoized: linear in the distinct nodes)."""
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, dict):
        n = 1 + sum(_expanded_size(k, seen, limit) + _expanded_size(v, seen, limit) for k, v in obj.items())
    elif isinstance(obj, list):
        n = 1 + sum(_expanded_size(v, seen, limit) for v in obj)
    else:
        n = 1
    seen[id(obj)] = n
    if n > limit:
        raise PeaceError(f"more than {limit:,} values once its aliases are expanded (an alias bomb?)")
    return n


def read_yaml(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PeaceError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise PeaceError(f"{what} file {path} is over {MAX_YAML_BYTES // 1024} KiB; refused")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PeaceError(f"{what} file {path} is not text (UTF-8); give a YAML file") from None
    d = parse_yaml(text, f"{what} file {path}")
    if not isinstance(d, dict):
        raise PeaceError(f"{what} file {path} must hold a mapping")
    return d


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with bounded cost and one kind of error: at most ``MAX_YAML_NODES`` values once
    aliases are expanded, no nesting past Python's recursion limit, no integer past Python's digit limit;
    every failure a ``PeaceError`` naming ``where``."""
    try:
        value = yaml.safe_load(text)
        _expanded_size(value, {}, MAX_YAML_NODES)
    except PeaceError as e:  # before ValueError, its base class
        raise PeaceError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise PeaceError(f"{where} is not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise PeaceError(f"{where} nests too deeply") from None
    except ValueError as e:  # int("9" * 5000): Python refuses integers of more than 4,300 digits
        raise PeaceError(f"{where} holds a number too long to read ({e})") from None
    return value


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
    return k.strip(), parse_yaml(v, f"override {k.strip()!r}: the value")


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
