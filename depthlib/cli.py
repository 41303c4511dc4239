"""Typed dataclass configs with command-line overrides: one source of defaults.

Every stage's config is a ``@dataclass(kw_only=True)`` whose fields carry their
defaults and a ``help`` string in ``field(metadata={"help": ...})``.
``parse_config(Config, argv)`` builds an ``argparse`` parser from the fields
(``snake_case`` field -> ``--snake-case`` flag), so an entry script never
repeats a default. ``__post_init__`` on the dataclass validates values.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--flag`` /
``--no-flag``), ``Optional`` of those, ``Literal[...]`` (choices) and
``tuple[int, ...]`` / ``list[...]`` (space separated values).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_text} (default: {default!r})"}
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=kwargs["help"])
        return
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        kwargs.update(type=type(choices[0]), choices=choices)
    elif origin in (tuple, list):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        kwargs.update(type=inner, nargs="+")
    elif tp in (str, int, float):
        kwargs["type"] = tp
    else:
        raise TypeError(f"config field {f.name!r}: unsupported type {tp!r}")
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument(flag, **kwargs)


def build_parser(config_cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per field of ``config_cls``."""
    parser = argparse.ArgumentParser(
        description=description or (config_cls.__doc__ or "").strip().split("\n")[0],
    )
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.init:
            _add_field(parser, f, hints[f.name])
    return parser


def parse_config(config_cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of ``config_cls``."""
    ns = build_parser(config_cls, description).parse_args(argv)
    values = vars(ns)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and values.get(f.name) is not None:
            values[f.name] = tuple(values[f.name])
    return config_cls(**values)


def config_to_json(config: Any) -> str:
    """The resolved config as JSON, to write next to a run's outputs.

    Fields whose name suggests a secret (``secret``, ``password``, ``token``,
    ``key`` in ``*_access_key``) are redacted.
    """
    out = {}
    for k, v in dataclasses.asdict(config).items():
        if any(s in k.lower() for s in ("secret", "password", "token", "access_key")) and v:
            v = "***"
        out[k] = v
    return json.dumps(out, indent=2, sort_keys=True, default=str)
