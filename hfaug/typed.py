"""Typed dataclasses from plain data (a recipe section, a task mapping): unknown keys, missing
required keys and wrong types are one-line errors naming ``section.key``; harmless cases are
converted (YAML's ``5e-6`` string -> float, int -> float, one string -> a one-item list)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from .errors import HfaugError, did_you_mean


def from_dict(cls: type, data: dict, where: str):
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name ``where.key``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise HfaugError(f"unknown key '{where}.{key}' in recipe{did_you_mean(key, fields)}")
        kwargs[key] = check_type(value, hints.get(key, Any), f"{where}.{key}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            help_text = f.metadata.get("help", "")
            raise HfaugError(f"missing required key '{where}.{name}' in recipe" + (f": {help_text}" if help_text else ""))
    try:
        return cls(**kwargs)
    except HfaugError:
        raise
    except (ValueError, TypeError) as e:
        raise HfaugError(f"recipe section '{where}': {e}") from None


def type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward refs in third-party bases: validate loosely
        return {}


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting the harmless cases (int -> float)."""
    if hint is Any or hint is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(value, arg, where)
            except HfaugError as e:
                errors.append(e)
        if isinstance(value, dict):  # a mapping: the error of the mapping's type says what is wrong in it
            for arg, error in zip([a for a in args if a is not type(None)], errors):
                if dataclasses.is_dataclass(arg) or typing.get_origin(arg) is dict:
                    raise error
        raise errors[0] if errors else HfaugError(f"'{where}' has an invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise HfaugError(f"'{where}' must be one of {list(args)}, got {value!r}{did_you_mean(str(value), map(str, args))}")
        return value
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if origin in (list, tuple) or hint in (list, tuple):
                # a single value where a list is expected: accept it as a list of one
                value = [value]
        item = args[0] if args else Any
        out = [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or hint is tuple) else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise HfaugError(f"'{where}' must be a mapping, got {type(value).__name__} {value!r}")
        if args:
            return {k: check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return value
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            return from_dict(hint, value, where)
        if issubclass(hint, enum.Enum):
            try:
                return hint(value)
            except ValueError:
                choices = [e.value for e in hint]
                raise HfaugError(f"'{where}' must be one of {choices}, got {value!r}") from None
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is float and isinstance(value, str):
            try:
                return float(value)  # YAML reads 5e-6 as a string
            except ValueError:
                pass
        if hint is bool and not isinstance(value, bool):
            raise HfaugError(f"'{where}' must be true or false, got {value!r}")
        if hint is int and isinstance(value, bool):
            raise HfaugError(f"'{where}' must be an integer, got {value!r}")
        if not isinstance(value, hint):
            raise HfaugError(f"'{where}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
