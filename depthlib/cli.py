"""Typed dataclass configs with command-line overrides: one source of defaults.

Every stage's config is a ``@dataclass(kw_only=True)`` whose fields carry their
defaults and a ``help`` string in ``field(metadata={"help": ...})``.
``parse_config(Config, argv)`` builds an ``argparse`` parser from the fields
(``snake_case`` field -> ``--snake-case`` flag), so an entry script never
repeats a default. ``__post_init__`` on the dataclass validates values.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--flag`` /
``--no-flag``), ``Optional`` of those, ``Literal[...]`` (choices) and
``tuple[int, ...]`` / ``list[...]`` (space separated values).

``parse_layered_config(Config, argv, presets)`` adds ``--preset NAME`` and
``--config FILE.yaml`` and resolves each field from, in rising priority: the
dataclass default, the preset, the YAML file, the command line. A list field
may be given several times (``--data a --data b``) or with several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any, NoReturn, Sequence, TypeVar

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any, layered: bool = False) -> None:
    """One flag for field ``f``. ``layered``: no argparse default and nothing
    required (values absent from the command line come from lower layers), and
    list fields accumulate over repeated flags."""
    flag = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {"dest": f.name, "help": f"{help_text} (default: {default!r})"}
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                            default=argparse.SUPPRESS if layered else default, help=kwargs["help"])
        return
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        kwargs.update(type=type(choices[0]), choices=choices)
    elif origin in (tuple, list):
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
        kwargs.update(type=inner, nargs="+")
        if layered and origin is list:
            kwargs["action"] = "extend"
    elif tp in (str, int, float):
        kwargs["type"] = tp
    else:
        raise TypeError(f"config field {f.name!r}: unsupported type {tp!r}")
    if layered:
        kwargs["default"] = argparse.SUPPRESS
    elif required:
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


def _tuples_from_lists(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and values.get(f.name) is not None:
            values[f.name] = tuple(values[f.name])
    return values


def parse_config(config_cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of ``config_cls``."""
    ns = build_parser(config_cls, description).parse_args(argv)
    return config_cls(**_tuples_from_lists(config_cls, vars(ns)))


def load_yaml_overrides(path_or_uri: str, config_cls: type) -> dict[str, Any]:
    """Field values from a YAML mapping (keys as field names or flag names,
    ``-`` or ``_``); unknown keys are an error naming them."""
    import yaml

    from depthlib import storage

    data = yaml.safe_load(storage.read_bytes(path_or_uri)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path_or_uri}: a config file must be a YAML mapping of settings")
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    out = {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(out) - names)
    if unknown:
        raise ValueError(f"{path_or_uri}: unknown settings {unknown}; known: {sorted(names)}")
    return out


def parse_layered_config(config_cls: type[T], argv: Sequence[str] | None = None,
                         presets: dict[str, dict[str, Any]] | None = None,
                         description: str | None = None) -> T:
    """Parse ``argv`` into ``config_cls`` with ``--preset`` and ``--config`` layers.

    Priority, lowest first: dataclass defaults, ``presets[--preset]``, the
    YAML file of ``--config``, flags given on the command line. A required
    field may come from any layer. The chosen preset's name is stored in the
    config's ``preset`` field when it has one.
    """
    presets = presets or {}
    parser = argparse.ArgumentParser(
        description=description or (config_cls.__doc__ or "").strip().split("\n")[0],
        epilog=("presets: " + ", ".join(sorted(presets))) if presets else None)
    parser.add_argument("--preset", choices=sorted(presets) or None, default=None,
                        help="named settings (lowest priority after the defaults)")
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML mapping of settings; overrides the preset, overridden by flags")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.init and f.name not in ("preset", "config"):
            _add_field(parser, f, hints[f.name], layered=True)
    ns = vars(parser.parse_args(argv))
    preset, config_file = ns.pop("preset"), ns.pop("config")
    values: dict[str, Any] = {}
    if preset:
        values.update(presets[preset])
    if config_file:
        values.update(load_yaml_overrides(config_file, config_cls))
    values.update(ns)
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    if "preset" in fields:
        values["preset"] = preset
    missing = [f"--{n.replace('_', '-')}" for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        parser.error(f"the following settings are required (flag, preset or --config): {', '.join(missing)}")
    return config_cls(**_tuples_from_lists(config_cls, values))


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


def exit_with_error(prog: str, error: Exception, status: int = 2, kind: str = "error") -> NoReturn:
    """End an entry script on bad input as argparse does: ``<prog>: <kind>: <error>``
    on stderr, no traceback, exit ``status`` (2: a bad setting or input)."""
    print(f"{prog}: {kind}: {error}", file=sys.stderr)
    sys.exit(status)
