"""Click options generated from the config dataclasses, so each option is declared once.

A field becomes an option when its ``metadata`` holds help text (see
:func:`eggs_ptp.methods.configs.setting`); its type, default and flag come from the field. ``--help``
lists options in sections: one per method family, then the run's shared settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from eggs_ptp.methods import CONFIG_TYPES, MethodConfig, config_type, method_config


class GroupedOption(click.Option):
    """An option that ``--help`` lists under ``group``."""

    def __init__(self, *args: Any, group: str = "Options", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose ``--help`` shows its options in sections, in the order first declared."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                sections.setdefault(getattr(param, "group", "Options"), []).append(record)
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)


def _dest(field: dataclasses.Field) -> str:
    return _flag(field).removeprefix("--").replace("-", "_")


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or f"--{field.name.replace('_', '-')}"


def _settings(kind: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(kind) if f.metadata.get("help")]


def _option(field: dataclasses.Field, group: str) -> GroupedOption:
    kind, default, help = str(field.type), field.default, field.metadata["help"]
    if field.metadata.get("choices"):
        return GroupedOption(
            [_flag(field), _dest(field)],
            type=click.Choice(field.metadata["choices"]),
            default=default,
            show_default=default is not None,
            help=help,
            group=group,
        )
    if kind == "bool":
        return GroupedOption([_flag(field), _dest(field)], is_flag=True, default=default, help=help, group=group)
    if kind.startswith("tuple"):
        return GroupedOption([_flag(field), _dest(field)], multiple=True, help=help, group=group)
    types = {"int": int, "float": float, "str": str, "Path": click.Path(path_type=Path)}
    base = kind.split("|")[0].strip()
    return GroupedOption(
        [_flag(field), _dest(field)],
        type=types[base],
        default=default,
        show_default=default is not None,
        help=help,
        group=group,
    )


def options_for(kind: type, group: str, declared: set[str]) -> list[GroupedOption]:
    """One option per setting of ``kind`` not already in ``declared`` (shared settings, like RIA's and
    EGGS's ``alpha``, are declared by the first family that has them)."""
    options = []
    for field in _settings(kind):
        if _dest(field) not in declared:
            declared.add(_dest(field))
            options.append(_option(field, group))
    return options


def method_options(declared: set[str]) -> list[GroupedOption]:
    """The stages every method composes with, then every method family's settings, each family in
    its own ``--help`` section."""
    options = options_for(MethodConfig, "Stages (every method)", declared)
    for kind in CONFIG_TYPES:
        names = ", ".join(name.name for name in kind.names)
        options += options_for(kind, f"{kind.title} settings ({names})", declared)
    return options


def values_for(kind: type, values: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The keyword arguments for ``kind`` from parsed option values (tuples for repeatable options)."""
    return {**{f.name: values[_dest(f)] for f in _settings(kind) if _dest(f) in values}, **overrides}


def method_from_options(name: str, values: dict[str, Any], ctx: click.Context) -> MethodConfig:
    """The config ``--method NAME`` stands for, with the family's options; an option given for
    another family is a usage error, not silently ignored."""
    kind = config_type(name)
    own = {_dest(f) for f in _settings(kind)}
    owners: dict[str, list[str]] = {}  # option dest -> families that have it
    for other in CONFIG_TYPES:
        for field in _settings(other):
            owners.setdefault(_dest(field), []).append(other.family)
    for dest, families in owners.items():
        if dest not in own and ctx.get_parameter_source(dest) is ParameterSource.COMMANDLINE:
            flag = "--" + dest.replace("_", "-")
            raise click.UsageError(f"{flag} is a setting of {' and '.join(families)}; --method {name} does not use it")
    return method_config(name, **values_for(kind, values))


def given(ctx: click.Context, names: Iterable[str]) -> list[str]:
    """Which of the parameters ``names`` were typed on the command line."""
    return [name for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]


__all__ = [
    "GroupedCommand",
    "GroupedOption",
    "given",
    "method_from_options",
    "method_options",
    "options_for",
    "values_for",
]
