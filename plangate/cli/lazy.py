"""Commands imported only when they run.

`plangate --help` must answer before a person notices: importing every command module up front
loads the store (SQLAlchemy, alembic), the web stack, httpx and pydantic-settings, about a second
of start-up for a list of names. So the top-level group holds a table of commands, each with the
one line `--help` shows and a loader; a command's module is imported when the command is run or
its own help is asked for. This is click's documented "lazily loading subcommands" pattern, done
through the `commands` mapping so that typer's and click's own code (completion, help, docs
generators walking `group.commands`) see an ordinary mapping.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.main

# typer vendors its own click (typer>=0.29); its commands are these classes, not `click`'s.
from typer import _click as click
from typer.core import TyperGroup
from typer.models import CommandInfo

Loader = Callable[[], "typer.Typer | Callable[..., Any]"]

# `-h` as `--help`, as most commands take it (it said "No such option: -h"); no option of
# plangate's has `-h` for anything else.
HELP_OPTIONS = {"help_option_names": ["--help", "-h"]}  # the first: in "Try ... for help"


@dataclass(frozen=True)
class LazyCommand:
    """One top-level command: its name, the line `plangate --help` shows, how to load it."""

    name: str
    summary: str
    load: Loader


def attribute(module: str, name: str) -> Loader:
    """Return a loader of `module.name`: a command function or a `typer.Typer` group."""
    return lambda: getattr(importlib.import_module(module), name)


def build(command: LazyCommand) -> click.Command:
    """Import a command and turn it into the click command typer would have built."""
    loaded = command.load()
    built: click.Command
    if isinstance(loaded, typer.Typer):
        # Always a group, as `add_typer` makes it: typer would make a one-command group
        # (`db upgrade`) that command itself.
        built = typer.main.get_group(loaded)
    else:
        info = CommandInfo(name=command.name, callback=loaded, short_help=command.summary)
        built = typer.main.get_command_from_info(
            info, pretty_exceptions_short=True, rich_markup_mode=None
        )
    built.name = command.name
    return built


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands: the table's names in order, each built the first time it is read."""

    def __init__(
        self, table: Sequence[LazyCommand], eager: MutableMapping[str, click.Command]
    ) -> None:
        self._table = {command.name: command for command in table}
        self._built: dict[str, click.Command] = dict(eager)

    def summary(self, name: str) -> str | None:
        """Return a lazy command's help line without importing it (None for other commands)."""
        entry = self._table.get(name)
        return entry.summary if entry is not None and name not in self._built else None

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._built:
            self._built[name] = build(self._table[name])
        return self._built[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._table.pop(name, None)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._table
        yield from (name for name in self._built if name not in self._table)

    def __len__(self) -> int:
        return len({*self._table, *self._built})

    def __contains__(self, name: object) -> bool:
        return name in self._table or name in self._built


class LazyGroup(TyperGroup):
    """A typer group whose subcommands come from `table`, loaded on first use."""

    table: ClassVar[Sequence[LazyCommand]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = LazyCommands(self.table, self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Return a command, importing it now if it is lazy (None for an unknown name)."""
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return every command's name in the table's order, importing none of them."""
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands from the table's lines, importing none of them."""
        commands = self.commands
        assert isinstance(commands, LazyCommands)
        rows = []
        for name in commands:
            summary = commands.summary(name)
            if summary is None:
                command = commands[name]
                if command.hidden:
                    continue
                summary = command.get_short_help_str(formatter.width)
            rows.append((name, summary))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
