"""The one parser style of ``python -m lit_pref``: jsonargparse, built from the typed signature of the function a
subcommand runs, with ``--config`` (several compose in order), ``--print_config`` and ``--help``; a parse error is
one line (key, value and reason) and a pointer to ``--help``. LightningCLI's subcommands use the same errors
(:class:`lit_pref.cli.LitPrefArgumentParser`).
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any, Callable, Iterable, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

PROG = "python -m lit_pref"
CONFIG_HELP = "A YAML file with any of the options below; several compose in order (later ones override)."


def one_line(message: str) -> str:
    """jsonargparse's nested multi-line parse error as one line: the failing key (nested keys joined by dots), the
    class it belongs to, and the first reason. A class path that cannot be imported (``--model foo.Bar``) reads
    ``model: cannot import class path 'foo.Bar' (No module named 'foo')``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    where = f"{'.'.join(keys)}: " if keys else ""
    class_path = re.search(r"Problem with given class_path '([^']+)'", message)
    lines = [re.sub(r"^\s*(- )?", "", line).rstrip() for line in message.strip().splitlines()]  # no "- " bullets
    reasons = [line for line in lines if line and not line.endswith(":")]
    reason = reasons[0] if reasons else message.strip()
    failed_import = [line for line in reasons if re.search(r"No module named|has no attribute", line)]
    if class_path and failed_import:  # among the alternatives a union type lists, the import is what went wrong
        return f"{where}cannot import class path {class_path.group(1)!r} ({failed_import[0]})"
    return where + reason + (f" (in {class_path.group(1)})" if class_path else "")


def exit_with_error(parser: ArgumentParser, message: str) -> NoReturn:
    """Writes ``error: <one line>`` and where to find the options, then exits with status 2."""
    prog = parser.prog.replace(" [options]", "")
    sys.stderr.write(f"error: {one_line(message)}\n(`{prog} --help` lists the options)\n")
    raise SystemExit(2)


class SubcommandParser(ArgumentParser):
    """jsonargparse's parser whose errors are one line (:func:`one_line`) and a pointer to ``--help``; named
    ``python -m lit_pref`` unless given a ``prog`` (also the parsers jsonargparse makes for ``--NAME.help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", PROG)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        exit_with_error(self, message)


def function_parser(function: Callable[..., Any], name: str, description: str, positional: bool = False,
                    skip: Iterable[str] = ()) -> SubcommandParser:
    """The parser of subcommand ``name``: ``--config`` and the arguments of ``function`` from its type hints and
    docstring (every argument typed, else an error at start-up).

    Args:
        function: The function the subcommand runs.
        name: The subcommand (the usage line reads ``python -m lit_pref NAME``).
        description: The text of ``--help`` above the options.
        positional: Required arguments are positional words instead of ``--name value``.
        skip: Arguments the caller adds itself (e.g. a positional list taking several words).
    """
    parser = SubcommandParser(prog=f"{PROG} {name}", description=description)
    parser.add_argument("--config", action=ActionConfigFile, help=CONFIG_HELP)
    parser.add_function_arguments(function, as_positional=positional, fail_untyped=True, skip=set(skip))
    return parser


def call(function: Callable[..., Any], parser: ArgumentParser, config: Namespace) -> Any:
    """Instantiates the classes of ``config`` (parsed by ``parser``) and calls ``function`` with its arguments."""
    objects = parser.instantiate(config)
    return function(**{name: objects[name] for name in inspect.signature(function).parameters})

