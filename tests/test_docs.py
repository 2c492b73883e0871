"""The documentation is true: its offline commands run, and every command it shows exists.

Convention (docs/ and README.md): a fenced `console` block holds commands that run offline, each
line starting with `$ ` (a trailing `\\` continues it; a heredoc's lines belong to it), the
lines after it being sample output. All console blocks of a page run in order in one fresh
folder, with their own data folder and nothing of the outer environment's plangate, OpenAI or
OpenTelemetry settings: embedded mode, no server, no network. A command must exit 0 unless it
ends with `# exits N`. Blocks that need a broker, a database server, a running `serve` or an id
(`bash` blocks) are not run, but the commands and options they name must exist.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import typer

# typer vendors its own click (typer>=0.29): its commands are these classes, not `click`'s.
from typer import _click as click
from typer.core import TyperGroup

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPECTED_EXIT = re.compile(r"#\s*exits\s+(\d+)\s*$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclass(frozen=True)
class Command:
    """One `$ ` command of a console block, and the exit code the page says it has."""

    text: str
    exit_code: int


def blocks(page: Path, language: str) -> list[str]:
    """Return the bodies of the page's fenced blocks in `language`, in order."""
    return [
        body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language
    ]


def console_commands(block: str) -> list[Command]:
    """Return the `$ ` commands of one console block, continuations and heredocs joined."""
    commands: list[Command] = []
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.startswith("$ "):
            continue  # sample output
        parts = [line[2:]]
        while parts[-1].endswith("\\") and index < len(lines):
            parts.append(lines[index])
            index += 1
        heredoc = HEREDOC.search(parts[0])
        if heredoc:
            while index < len(lines):
                parts.append(lines[index])
                index += 1
                if parts[-1].strip() == heredoc.group(1):
                    break
        expected = EXPECTED_EXIT.search(parts[0])
        commands.append(Command("\n".join(parts), int(expected.group(1)) if expected else 0))
    return commands


def page_commands(page: Path) -> list[Command]:
    return [command for block in blocks(page, "console") for command in console_commands(block)]


RUNNABLE = [page for page in PAGES if page_commands(page)]


def offline_env(folder: Path) -> dict[str, str]:
    """This Python's environment without a plangate, OpenAI or OTel setting, rooted in `folder`."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PLANGATE_", "OPENAI_", "OTEL_", "JIRA_", "PAGERDUTY_"))
        and name not in ("XDG_DATA_HOME", "COLUMNS", "LINES")
    }
    return inherited | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(folder / "home"),
        "PLANGATE_DATA_DIR": str(folder / "data"),
        "PYTHONIOENCODING": "utf-8",
    }


def script(commands: list[Command]) -> str:
    """One bash script running `commands` in order, stopping at the first unexpected exit."""
    lines = ["set -u"]
    for number, command in enumerate(commands):
        lines += [
            command.text,
            f'status=$?; if [ "$status" -ne {command.exit_code} ]; then '
            f'echo "@@command {number} exited $status" >&2; exit 99; fi',
        ]
    return "\n".join(lines) + "\n"


def test_the_docs_show_commands_that_run_offline() -> None:
    """The getting-started page and the README's tour are among the pages whose commands run."""
    names = {page.relative_to(ROOT).as_posix() for page in RUNNABLE}
    assert {"docs/getting-started.md", "docs/how-to/policy.md"} <= names, names


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_offline_command_of_the_page_runs_as_shown(page: Path, tmp_path: Path) -> None:
    """Given a fresh folder and no server, each console command of the page exits as it says."""
    commands = page_commands(page)
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        ["bash", "-c", script(commands)],
        cwd=tmp_path,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )
    failed = re.search(r"@@command (\d+) exited (\d+)", done.stderr)
    where = commands[int(failed.group(1))].text if failed else "(the script itself)"
    assert done.returncode == 0, (
        f"{page.name}: `{where}` exited {failed.group(2) if failed else done.returncode}\n"
        f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )


def _shown_invocations() -> list[tuple[str, list[str]]]:
    """Every `plangate ...` invocation in a console or bash block of any page, split as words."""
    shown = []
    for page in PAGES:
        for language in ("console", "bash"):
            for block in blocks(page, language):
                joined = re.sub(r"\\\n\s*", " ", block)
                for line in joined.splitlines():
                    line = line.removeprefix("$ ")
                    for part in re.split(r"&&|\|\||;|\||&|\$\(", line):
                        words = part.split("#", 1)[0].strip()
                        if words.startswith("plangate "):
                            try:
                                shown.append((page.name, shlex.split(words)))
                            except ValueError:
                                shown.append((page.name, words.split()))
    return shown


def test_every_command_and_option_the_docs_show_exists() -> None:
    """Each `plangate ...` in the docs names a real command, and each `--option` a real one."""
    from plangate.cli.main import app

    root = typer.main.get_command(app)
    problems = []
    for page, words in _shown_invocations():
        command: click.Command = root
        context = click.Context(root, info_name="plangate")
        for word in words[1:]:
            if not isinstance(command, TyperGroup) or word.startswith("-"):
                break
            sub = command.get_command(context, word)
            if sub is None:
                problems.append(f"{page}: `{' '.join(words)}`: no command {word!r}")
                break
            command, context = sub, click.Context(sub, info_name=word, parent=context)
        options = {name for param in command.params for name in param.opts + param.secondary_opts}
        options.add("--help")
        for word in words:
            name = word.split("=", 1)[0]
            if name.startswith("--") and name not in options:
                problems.append(f"{page}: `{' '.join(words)}`: {command.name} has no {name}")
    assert not problems, "\n".join(problems)


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reference_hooks", ROOT / "tools/docs/reference_hooks.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_pages_name_every_command_setting_route_and_message() -> None:
    """The generated reference covers the code: no command, setting, path or type missing."""
    from plangate.config import Settings, variable_name
    from schemas.routing import ROUTES

    hooks = _hooks()
    cli, settings = hooks.cli_reference(), hooks.settings_reference()
    http, messages = hooks.http_reference(), hooks.messages_reference()
    for path in ("plangate run", "plangate review approve", "plangate goals cancel"):
        assert f"## `{path}`" in cli
    assert "Usage: plangate policy backtest" in cli
    assert all(f"`{variable_name(field)}`" in settings for field in Settings.model_fields)
    assert all(f"## `{message_type}`" in messages for message_type in ROUTES)
    for route in (
        "POST /api/v1/goals",
        "GET /api/v1/goals/{goal_id}",
        "POST /api/v1/reviews/{plan_id}/approve",
    ):
        assert f"## `{route}`" in http
    assert "| `GET /healthz` |" in http
