"""Typed configs -> command-line flags, for every entry point (trainer, recipes, data_prep, Azure ML).

A config is a dataclass: each field has a default, a type (`Literal[...]` for choices) and its help
as the string under it (a field docstring) or as `field(metadata={"help": ...})`. Checks live in the
dataclass's `__post_init__`, so a config built from flags, from YAML or in Python is checked the same
way. `add_arguments` writes the flags; `from_flat` builds the object back; `to_argv` turns an object
into the flags that rebuild it (how the two-phase runner writes each phase's command line).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings (the string literal under each field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        previous = None
        for node in tree.body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                previous = node.target.id
            elif previous and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                docs[previous] = " ".join(str(node.value.value).split())
                previous = None
            else:
                previous = None
    return docs


def field_help(cls: type, f: dataclasses.Field) -> str:
    return f.metadata.get("help") or field_docs(cls).get(f.name, "")


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def flag_name(name: str, dash: bool) -> str:
    return "--" + (name.replace("_", "-") if dash else name)


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, prefix: str = "",
                  dash: bool = False, skip: Iterable[str] = (), required: Iterable[str] = (),
                  defaults: Any = None) -> None:
    """One flag per field of `cls` (nested dataclasses as `--section.field`). Unset flags are absent
    from the namespace (argparse.SUPPRESS), so the caller knows what the user gave."""
    hints = typing.get_type_hints(cls)
    skip, required = set(skip), set(required)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        dest = prefix + f.name
        if dataclasses.is_dataclass(tp):
            nested_default = getattr(defaults, f.name) if defaults is not None else None
            add_arguments(parser, tp, prefix=dest + ".", dash=dash, defaults=nested_default)
            continue
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        help_ = field_help(cls, f)
        if default not in (None, "", dataclasses.MISSING) and f.name not in required:
            help_ += f" (default: {_show(default)})"
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_.replace("%", "%%")}
        if f.name in required:
            kw["required"] = True
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kw["choices"] = list(typing.get_args(tp))
            kw["type"] = type(kw["choices"][0])
        elif origin in (list, tuple):
            kw["nargs"] = "+"
            kw["type"] = _unwrap_optional(typing.get_args(tp)[0])
        else:
            kw["type"] = tp
        names = [flag_name(dest, dash)] + (list(f.metadata.get("aliases", ())) if not prefix else [])
        parser.add_argument(*names, **kw)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"phase1.learning_rate": x} -> {"phase1": {"learning_rate": x}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def from_dict(cls: type, values: Mapping[str, Any], *, source: str = "config") -> Any:
    """Build `cls` from a (nested) dict, refusing unknown keys with the names that exist."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        said = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise ValueError(f"{source}: unknown setting(s) {said}; see --help for the settings")
    kwargs = {}
    for name, value in values.items():
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = from_dict(tp, value, source=f"{source} [{name}]")
        elif value is not None:
            value = _coerce(value, tp, f"{source}: {name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """YAML reads `1e-3` as a string (YAML 1.1 floats need a dot) and users write numbers in quotes:
    convert scalars to the field's type, or say which setting is wrong."""
    try:
        if tp is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "yes", "1")
        if tp is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, str):
            return int(value, 10)
        if tp is Path:
            return Path(value)
        if tp is str and isinstance(value, (int, float)):
            return str(value)
    except ValueError:
        raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def to_argv(obj: Any, *, dash: bool = False, only_changed: bool = True, skip: Iterable[str] = ()) -> list[str]:
    """The flags that rebuild `obj` through `add_arguments` (fields equal to the default left out)."""
    argv: list[str] = []
    hints = typing.get_type_hints(type(obj))
    skip = set(skip)
    for f in dataclasses.fields(obj):
        if f.name in skip or not f.init:
            continue
        value = getattr(obj, f.name)
        if only_changed and value == _field_default(f):
            continue
        tp = _unwrap_optional(hints[f.name])
        flag = flag_name(f.name, dash)
        if tp is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            continue  # an Optional set back to None: the default is None too
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_into(parser: argparse.ArgumentParser, build, argv: list[str] | None = None):
    """Parse, then `build(namespace_dict)`; a ValueError from the config's checks becomes a usage
    error (exit 2) that names the flag, instead of a traceback."""
    ns = vars(parser.parse_args(argv))
    try:
        return build(ns)
    except ValueError as exc:
        parser.error(str(exc))
