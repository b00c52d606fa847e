"""Dataclasses from YAML data, every value checked against its field's type.

Shared by pipeline specs and training configs: a wrong key or value stops with the file
(`source`) and the dotted key at fault, e.g. `simclr.yaml: optim.lr: expected a number, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from sslpipe.errors import SslpipeError


def build(cls, data: object, where: str, source: str, *, given: dict | None = None,
          also: tuple[str, ...] = ()):
    """Instantiate dataclass `cls` from a mapping; fields not in `data` keep their defaults.

    A field may be a dataclass itself (a nested mapping; `true` means its defaults, `false` means
    None for an optional one), a Literal, an optional, a fixed or variable tuple, or a scalar.
    A field named `source`, and the fields in `given` (values the caller parsed itself), never come
    from `data`; `also` names keys the caller took out of `data`, for the list of expected keys.
    """
    if not isinstance(data, dict):
        raise SslpipeError(f"{source}: {where} must be a mapping, got {data!r}")
    given = given or {}
    fields = {f.name: f for f in dataclasses.fields(cls)
              if f.init and f.name != "source" and f.name not in given}
    hints = typing.get_type_hints(cls)
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            raise SslpipeError(f"{source}: {prefix}{key}: unknown key (expected one of: "
                               f"{', '.join([*fields, *also])})")
    for key in required:
        if key not in data:
            raise SslpipeError(f"{source}: {prefix}{key}: required")
    values = {key: convert(hints[key], value, f"{prefix}{key}", source) for key, value in data.items()}
    try:
        return cls(**values, **given)
    except ValueError as e:
        raise SslpipeError(f"{source}: {where or cls.__name__}: {e}") from None


def convert(hint, value, where: str, source: str):
    """`value` as type `hint`, or an SslpipeError naming `source` and `where`."""
    def wrong(expected: str):
        return SslpipeError(f"{source}: {where}: expected {expected}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if dataclasses.is_dataclass(inner[0]) and value is False:
            return None  # `blur: false` switches an augmentation off
        return convert(inner[0], value, where, source)
    if dataclasses.is_dataclass(hint):
        return build(hint, {} if value is True else value, where, source)
    if origin is typing.Literal:
        if value not in args:
            raise wrong("one of " + ", ".join(map(str, args)))
        return value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if not isinstance(value, (list, tuple)) or not value:
                raise wrong("a non-empty list")
            return tuple(convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong(f"a list of {len(args)} numbers")
        return tuple(convert(a, v, f"{where}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        if not math.isfinite(value):  # .inf and .nan parse as YAML floats; no setting takes them
            raise wrong("a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    raise TypeError(f"unsupported field type {hint}")  # a bug in the dataclass, not in the data


def yaml_problem(error) -> str:
    """A `yaml.YAMLError` on one line: what is wrong and where (PyYAML's own text takes five)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
