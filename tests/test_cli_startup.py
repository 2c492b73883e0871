"""The command line answers fast: a command loads only what it uses.

Speed itself is measured in bench/cli_startup.py; these tests pin down the imports that made
it slow, which fail deterministically.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plangate.cli.main import Commands, app

HEAVY_FOR_HELP = (
    "sqlalchemy",
    "alembic",
    "kombu",
    "redis",
    "httpx",
    "fastapi",
    "openai",
    "pydantic_settings",
    "opentelemetry.sdk",
    "cel",
)
# What reading a goal's state never needs: the broker, the web stack, the model's SDK and the
# migration tool (the schema check reads alembic's version row itself).
HEAVY_FOR_STATUS = ("alembic", "kombu", "redis", "fastapi", "uvicorn", "openai", "cel")


def imported_by(arguments: list[str], data_dir: Path) -> set[str]:
    """Run `plangate ARGUMENTS` and return the name of every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "plangate", *arguments],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PLANGATE_DATA_DIR": str(data_dir)},
        check=False,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def loaded(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(name for name in heavy if name in modules)


def test_help_lists_every_command_without_importing_any_of_them(tmp_path: Path) -> None:
    modules = imported_by(["--help"], tmp_path)
    assert "plangate.cli.main" in modules
    assert loaded(modules, HEAVY_FOR_HELP) == []
    assert not any(
        name.startswith("plangate.cli.")
        for name in modules - {"plangate.cli.main", "plangate.cli.lazy"}
    )


def test_status_reads_the_store_without_loading_the_broker_or_the_web_stack(
    tmp_path: Path,
) -> None:
    modules = imported_by(["status", "abcdef12"], tmp_path)
    assert "plangate.store" in modules
    assert loaded(modules, HEAVY_FOR_STATUS) == []


@pytest.mark.parametrize("command", [entry.name for entry in Commands.table])
def test_every_command_loads_and_explains_itself(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: plangate {command}" in result.output


def test_help_shows_each_commands_line_uncut() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    for entry in Commands.table:
        assert f"{entry.name} " in result.output
        assert entry.summary in " ".join(result.output.split())
