"""Typed job configs: defaults are the paper's, values may come from a YAML file and from flags.

Precedence: command-line flag > YAML file (`--config`) > dataclass default. Every job writes the
effective config next to its output, so a run can be repeated from that file alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from typing import Any, NoReturn, TypeVar

import yaml

from unmask_core import storage
from unmask_core.errors import UserError

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field with its help text (shown by --help). `choices=[...]` fixes a scalar's values,
    `item_choices=[...]` those of a list's items; --help lists them either way."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs}
        )
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type, optional) for an annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_list(item_type: type):
    def parse(text: str) -> list:
        return [item_type(part.strip()) for part in text.split(",") if part.strip()]

    return parse


class JobConfig:
    """Base of every job config: a config is checked however it is built (flags, YAML or code).

    `__post_init__` checks each value against its field's type and choices, then runs the subclass'
    `check()`, which normalises and enforces the rules between fields."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _checked(field.name, hints[field.name], getattr(self, field.name))
            choices = field.metadata.get("choices")
            if choices is not None and value not in choices:
                raise UserError(
                    f"--{_flag(field.name)}: {value!r} is not one of {', '.join(map(str, choices))}"
                )
            item_choices = field.metadata.get("item_choices")
            if item_choices is not None:
                unknown = [v for v in value if v not in item_choices]
                if unknown:
                    raise UserError(
                        f"--{_flag(field.name)}: {', '.join(map(repr, unknown))} not among "
                        f"{', '.join(map(str, item_choices))}"
                    )
            setattr(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields, and normalisation; subclasses override it."""


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _checked(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the field's type, or a UserError naming the option: YAML gives strings, numbers and
    booleans as it reads them, and "false" must not become True."""
    base, optional = _base_type(annotation)
    if value is None and optional:
        return None
    where = f"--{_flag(name)}"
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if typing.get_origin(base) is list:
        (item_type,) = typing.get_args(base)
        if isinstance(value, str):
            value = _parse_list(item_type)(value)
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_checked(name, item_type, item) for item in value]
    return value


# Old names kept for one release: flag or YAML key -> the field it now sets. Neither is shown in --help.
RENAMED = {"out": "output"}


class _RenamedFlag(argparse.Action):
    """An old flag that still works, with a note naming the one that replaced it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: note: {option_string} is now --{_flag(self.dest)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", metavar="YAML", help="YAML file with config values (flags override it)")
    names = {field.name for field in dataclasses.fields(cls)}
    for old, new in RENAMED.items():
        if new in names and old not in names:
            parser.add_argument(
                f"--{_flag(old)}",
                dest=new,
                action=_RenamedFlag,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    for field in dataclasses.fields(cls):
        annotation, _ = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        fixed = field.metadata.get("choices") or field.metadata.get("item_choices")
        if fixed:
            help_text += f" (choices: {', '.join(map(str, fixed))})"
        if field.metadata.get("required"):
            help_text += " (required)"
        elif default not in (None, "", []):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(annotation) is list:
            (item_type,) = typing.get_args(annotation)
            parser.add_argument(flag, type=_parse_list(item_type), metavar="A,B,...", **kwargs)
            if isinstance(parser, JobArgumentParser):
                example = ",".join(map(str, default[:2])) or "a,b"
                parser.list_example = parser.list_example or f"{flag} {example}"
        else:
            parser.add_argument(flag, type=annotation, metavar=field.name.upper(), **kwargs)


def read_yaml_config(uri: str) -> dict[str, Any]:
    """A `--config` file's values, or one line naming the file (and the line, for malformed YAML)."""
    try:
        loaded = yaml.safe_load(storage.read_bytes(uri).decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{uri}: not a UTF-8 text file (byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise UserError(f"{uri}: not valid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{uri}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{uri}: a config file must be a YAML mapping")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def build_config(cls: type[C], namespace: argparse.Namespace) -> C:
    values: dict[str, Any] = {}
    if getattr(namespace, "config", None):
        values.update(read_yaml_config(namespace.config))
    names = {f.name for f in dataclasses.fields(cls)}
    for old, new in RENAMED.items():
        if old in values and new in names and old not in names:
            print(f"note: {namespace.config}: the key '{old}' is now '{new}'", file=sys.stderr)
            values.setdefault(new, values.pop(old))
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{namespace.config}: unknown config keys {unknown}")
    values.update({k: v for k, v in vars(namespace).items() if k in names})
    missing = [
        f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and not values.get(f.name)
    ]
    if missing:
        raise UserError("missing required options: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return cls(**values)


# Every job's exit status; shown by each job's --help and in docs/operations.md.
EXIT_CODES = (
    "exit status: 0 done; 1 failed during the work (storage or Ray failed, a bug, or rows that record "
    "one): finished work is kept, and the same command resumes it; 2 refused before any work (usage, "
    "bad settings, or bad inputs found by the checks): nothing was written"
)


class JobArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (a UserError: exit status 2), not the whole usage.
    Options are taken as spelled in full, never by a prefix (one that matched `--output` today could
    match two options tomorrow)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.list_example = ""  # how a list option is written, for the error of one written with spaces

    def error(self, message: str) -> NoReturn:
        unrecognized = message.removeprefix("unrecognized arguments: ").split()
        if message.startswith("unrecognized arguments") and self.list_example:
            if unrecognized and not unrecognized[0].startswith("-"):  # a list's items after a space
                message += f"; a list is one comma-separated value, e.g. {self.list_example}"
        raise UserError(f"{message} ({self.prog} --help lists the options)")


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's, torch's and the workers' own messages, and the traceback of a failure",
    )


def apply_verbose(namespace: argparse.Namespace) -> None:
    # An environment variable, so that Ray workers started later see it too.
    if getattr(namespace, "verbose", False):
        os.environ["UNMASK_VERBOSE"] = "1"


def verbose() -> bool:
    """`--verbose` (or UNMASK_RAY_WORKER_LOGS=1): show Ray's, torch's and the workers' own messages."""
    return os.environ.get("UNMASK_VERBOSE") == "1" or os.environ.get("UNMASK_RAY_WORKER_LOGS") == "1"


def parse_config(cls: type[C], argv: list[str] | None, prog: str, description: str) -> C:
    parser = JobArgumentParser(prog=prog, description=description, epilog=EXIT_CODES)
    add_config_arguments(parser, cls)
    add_verbose_argument(parser)
    namespace = parser.parse_args(argv)
    apply_verbose(namespace)
    return build_config(cls, namespace)


def save_config(cfg: Any, out_uri: str, name: str = "config.yaml") -> str:
    """Write the effective config next to a job's outputs and return its URI."""
    uri = storage.join(out_uri, name)
    text = yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)
    storage.write_bytes_atomic(uri, text.encode())
    return uri
