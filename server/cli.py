"""`seedstream serve` (also `python -m seedstream.server`): the flags, generated from the settings.

Each setting of `seedstream.server.settings` is a flag whose default is its
environment variable when that is set and non-empty (argparse parses it like a
flag value), else the setting's default. A bool setting's flag turns it from
its default, and so does its environment variable set to 1.

Only the stdlib is imported here, so `--help` is quick; the server (grpc, then
torch) is imported once the flags are parsed.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from typing import Any

from .settings import GROUPS, EngineConfig, Flag, ServeOptions, all_flags, flags_of

DESCRIPTION = (
    "Start the gRPC server. It answers at once (health NOT_SERVING, requests UNAVAILABLE) and\n"
    "serves once the model is loaded; loading progress is logged to stderr. The first start of a\n"
    "model converts it into a cache; later starts are fast. SIGTERM/SIGINT: stop taking requests,\n"
    "let in-flight ones finish within --grace-period, exit 0.\n"
    "Every flag can also be set by the environment variable shown in its help."
)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value in (None, "") else value


def _help(flag: Flag) -> str:
    text = re.sub("`", "", flag.setting.help).replace("%", "%%")
    if flag.type is bool:
        return f"{text} [{flag.env}=1]"
    if flag.default is not None:
        return f"{text} [{flag.env}] (default: %(default)s)"
    if flag.setting.shown is not None:
        return f"{text} [{flag.env}] (default: {re.sub('`', '', flag.setting.shown)})"
    return f"{text} [{flag.env}]"


def _add_flag(group: argparse._ArgumentGroup, flag: Flag) -> None:
    env = _env(flag.env)
    if flag.type is bool:
        default = (not flag.default) if env == "1" else flag.default
        action = "store_false" if flag.default else "store_true"
        group.add_argument(flag.flag, dest=flag.name, action=action, default=default, help=_help(flag))
        return
    # A string default is parsed by argparse as if given on the command line (choices are not checked:
    # the settings' own checks report those when the server starts).
    group.add_argument(
        flag.flag,
        dest=flag.name,
        type=flag.parse,
        default=flag.default if env is None else env,
        choices=flag.setting.choices,
        metavar=None if flag.setting.choices else flag.metavar,
        help=_help(flag),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting's flag, in groups."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for flag in all_flags():
        _add_flag(groups[flag.setting.group], flag)


def build_parser(prog: str = "seedstream serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    engine: dict[str, Any] = {f.name: getattr(args, f.name) for f in flags_of(EngineConfig)}
    return ServeOptions(engine=engine, **{f.name: getattr(args, f.name) for f in flags_of(ServeOptions)})


def main(argv: Sequence[str] | None = None, prog: str = "seedstream serve") -> int:
    """Parse the flags and run the server until SIGTERM/SIGINT; returns the exit code."""
    options = options_from_args(build_parser(prog).parse_args(argv))
    from .app import serve

    return serve(options)
