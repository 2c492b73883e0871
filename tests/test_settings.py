"""Settings is the only reader of plangate's configuration in the environment.

The scan below fails on any other read of the environment in the packages, naming file:line,
unless the line is in `ALLOWED` with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from plangate.client import Client
from plangate.config import Settings, default_data_dir, settings_error, variable_name
from plangate.current_settings import current_settings
from plangate.errors import ConfigError
from plangate.redaction import is_secret
from tests.support import memory_client, plangate_in

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("plangate", "schemas", "planner_worker", "approval_gate", "executor_worker")
# The modules that read plangate's variables: pydantic-settings' `Settings`, and
# `current_settings()`, which notices when the environment changed.
READERS = ("plangate/config.py", "plangate/current_settings.py")
ENVIRONMENT_READ = re.compile(
    r"\bos\.environ\b|\bgetenv\s*\(|\benviron\.get\s*\(|\benviron\s*\[|"
    r"\bfrom\s+os\s+import\b.*\benviron\b"
)


@dataclass(frozen=True)
class Allowed:
    """Lines of `path` matching `line` may read the environment, for `reason`."""

    path: str
    line: str
    reason: str


ALLOWED = (
    Allowed(
        "plangate/telemetry.py",
        r"OTEL_|^return os\.environ$",
        "The OTEL_* variables are the OpenTelemetry SDK's documented configuration, which the "
        "SDK and its exporters read themselves too; plangate follows them, it does not own them.",
    ),
    Allowed(
        "plangate/redaction.py",
        r"^environ = os\.environ if environ is None else environ$",
        "Redaction scans every variable for secrets: a secret may be in any variable (an "
        "integration's token, OTLP headers, a tool's key), not only in plangate's settings.",
    ),
    Allowed(
        "plangate/tools/mcp/servers_file.py",
        r"^found = os\.environ\.get\(match\.group\(1\)\)$",
        "${VAR} in an MCP servers file is the user's interpolation of variables they choose, "
        "not plangate's configuration.",
    ),
    Allowed(
        "plangate/cli/review.py",
        r'os\.environ\.get\("VISUAL"\) or os\.environ\.get\("EDITOR"\)',
        "VISUAL and EDITOR name the user's editor by Unix convention, not plangate's setting.",
    ),
)


def environment_reads() -> list[tuple[str, int, str]]:
    """Every line of the packages (but the READERS) reading the environment: path, number, text."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in READERS:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                text = line.strip()
                if not text.startswith("#") and ENVIRONMENT_READ.search(text):
                    found.append((relative, number, text))
    return found


def allowance(path: str, text: str) -> Allowed | None:
    """Return the allowlist entry that permits this line, if any."""
    return next((a for a in ALLOWED if a.path == path and re.search(a.line, text)), None)


def test_only_settings_reads_the_environment() -> None:
    """Given the packages' source, when every read of the environment is listed,
    then each is in one of the READERS or allowed with a reason.
    """
    unjustified = [
        f"{path}:{number}: {text}"
        for path, number, text in environment_reads()
        if allowance(path, text) is None
    ]

    assert not unjustified, (
        "read these through plangate.config.Settings (a field; `current_settings()` where no "
        "settings are passed), or add them to ALLOWED with the reason:\n" + "\n".join(unjustified)
    )


def test_every_allowlist_entry_is_still_needed() -> None:
    """Given the allowlist, then each entry permits at least one line that exists."""
    used = {allowance(path, text) for path, _, text in environment_reads()}

    stale = [f"{a.path}: {a.line}" for a in ALLOWED if a not in used]
    assert not stale, "remove these entries from ALLOWED, nothing matches them:\n" + "\n".join(
        stale
    )


def test_every_setting_is_described() -> None:
    """The settings reference in the docs is made from the fields: none may lack a description."""
    undescribed = [name for name, f in Settings.model_fields.items() if not f.description]

    assert not undescribed


def test_conventional_names_are_read_unprefixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given XDG_DATA_HOME, OPENAI_BASE_URL and OPENAI_API_KEY (and a prefixed decoy),
    then Settings reads the unprefixed names, the key as a secret that is redacted.
    """
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PLANGATE_DATA_DIR", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-settings-canary-123")
    monkeypatch.setenv("PLANGATE_OPENAI_API_KEY", "sk-not-this-one-456")

    settings = Settings()

    assert settings.data_dir == tmp_path / "xdg" / "plangate"
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert isinstance(settings.openai_api_key, SecretStr)
    assert settings.openai_api_key.get_secret_value() == "sk-settings-canary-123"
    assert "sk-settings" not in repr(settings)
    assert is_secret("sk-settings-canary-123")
    assert [variable_name(f) for f in ("openai_api_key", "xdg_data_home", "intake_token")] == [
        "OPENAI_API_KEY",
        "XDG_DATA_HOME",
        "PLANGATE_INTAKE_TOKEN",
    ]


def test_a_variable_set_but_empty_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given variables set to "" (as compose files leave them), then they count as unset."""
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    for name in ("XDG_DATA_HOME", "OPENAI_API_KEY", "PLANGATE_INTAKE_TOKEN", "PLANGATE_DEMO_SLA"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("PLANGATE_TRACE_CONTENT", "")
    monkeypatch.delenv("PLANGATE_DATA_DIR", raising=False)

    settings = Settings()

    assert settings.data_dir == tmp_path / ".local" / "share" / "plangate"
    assert settings.openai_api_key is None
    assert settings.intake_token is None
    assert settings.demo_sla is None
    assert settings.trace_content is False


def test_the_webhook_allowed_hosts_are_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANGATE_WEBHOOK_ALLOWED_HOSTS", "hooks.example.com,[::1]:8080")

    assert Settings().webhook_allowed_hosts == "hooks.example.com,[::1]:8080"


def test_current_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given current_settings() read once, when a variable changes, then they are read again;
    while nothing changes, the same settings are returned (reading them costs milliseconds).
    """
    monkeypatch.setenv("PLANGATE_TRACE_CONTENT", "0")
    before = current_settings()
    assert current_settings() is before
    assert before.trace_content is False

    monkeypatch.setenv("PLANGATE_TRACE_CONTENT", "1")

    assert current_settings().trace_content is True


def test_a_variable_plangate_does_not_read_keeps_the_settings_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given current_settings() read once, when a variable outside plangate's changes (or a
    lower-case spelling of one of plangate's appears), then only the latter reads them again.
    """
    before = current_settings()

    monkeypatch.setenv("SOME_OTHER_PROGRAMS_VARIABLE", "changed")
    assert current_settings() is before

    monkeypatch.setenv("plangate_trace_content", "1")  # pydantic-settings ignores the case
    assert current_settings() is not before
    assert current_settings().trace_content is True


def test_an_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANGATE_DEMO_SLA", "lots")

    with pytest.raises(ConfigError, match="PLANGATE_DEMO_SLA: must be a whole number, not 'lots'"):
        current_settings()


@pytest.mark.parametrize("tools", ["", " , "], ids=["empty", "only commas"])
def test_tools_that_name_no_module_are_refused_at_start(tools: str, tmp_path: Path) -> None:
    """No tool at all made every plan name a tool no executor has: a run waited out its
    timeout, an executor failed each goal it took. Refused instead, saying what to set."""
    with pytest.raises(ValidationError) as refused:
        Settings(data_dir=tmp_path, tools=tools)

    said = str(settings_error(refused.value))
    assert said.startswith("PLANGATE_TOOLS names no tool module")
    assert "leave it unset for the demo tools" in said


def test_mcp_servers_alone_are_tools_enough(tmp_path: Path) -> None:
    servers = tmp_path / "mcp.json"
    servers.write_text("{}")

    assert Settings(data_dir=tmp_path, tools="", mcp_servers=servers).tool_modules() == []


def test_a_file_or_folder_setting_set_but_empty_is_unset_not_the_current_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given the policy, playbook, reviewers, key and trusted keys variables set to "",
    Then each counts as unset (its default), never as the folder `.` it used to read.
    """
    names = (
        "PLANGATE_POLICY_FILE",
        "PLANGATE_PLAYBOOK_FILE",
        "PLANGATE_REVIEWERS_FILE",
        "PLANGATE_SIGNING_KEY_FILE",
        "PLANGATE_TRUSTED_KEYS_DIR",
        "PLANGATE_MCP_SERVERS",
    )
    for name in (*names, "PLANGATE_DATA_DIR"):
        monkeypatch.setenv(name, "")

    settings = Settings()

    assert settings.policy_file is None
    assert settings.playbook_file is None
    assert settings.reviewers_file is None
    assert settings.signing_key_file is None
    assert settings.trusted_keys_dir is None
    assert settings.mcp_servers is None
    assert settings.data_dir == default_data_dir(settings.xdg_data_home)


@pytest.mark.parametrize(
    ("mistyped", "meant"),
    [
        ("PLANGATE_POLICY_FLIE", "PLANGATE_POLICY_FILE"),
        ("PLANGATE_BROKER_ULR", "PLANGATE_BROKER_URL"),
        ("PLANGATE_REVIEWER_FILE", "PLANGATE_REVIEWERS_FILE"),
        # A setting's name without its suffix: too short for the spelling match.
        ("PLANGATE_POLICY", "PLANGATE_POLICY_FILE"),
        ("PLANGATE_DATA", "PLANGATE_DATA_DIR"),
        ("PLANGATE_BROKER", "PLANGATE_BROKER_URL"),
    ],
)
def test_a_variable_one_slip_from_a_setting_is_refused_naming_the_setting(
    tmp_path: Path, mistyped: str, meant: str
) -> None:
    """Given a deny-all policy named by a mistyped variable (`PLANGATE_POLICY_FLIE`),
    When a worker or any command starts,
    Then it exits 2 in one line naming the variable it meant: it was ignored, and the gate
    decided by the packaged default policy, approving reads unattended.
    """
    result = plangate_in(tmp_path, "goals", "list", **{mistyped: str(tmp_path / "x")})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {mistyped} is not a setting plangate reads; did you mean {meant}? (the "
        "documentation's Settings page lists them all; a variable of your own takes another "
        "prefix)"
    ]


def test_a_client_reading_the_environment_refuses_a_misspelt_variable_as_commands_do(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given PLANGATE_BROKR_URL set (a slip of PLANGATE_BROKER_URL),
    When a script makes `Client()`, which reads its settings from the environment,
    Then it raises the ConfigError a command exits 2 with, naming the setting meant: it used
    the default broker, and the goal it queued there reached no worker. A Client given its
    Settings reads no variable, and starts.
    """
    monkeypatch.setenv("PLANGATE_BROKR_URL", "redis://127.0.0.1:6379/0")

    with pytest.raises(ConfigError) as refused:
        Client()
    with memory_client(settings) as given:
        assert given.settings.broker_url == "memory://"

    assert str(refused.value) == (
        "PLANGATE_BROKR_URL is not a setting plangate reads; did you mean PLANGATE_BROKER_URL? "
        "(the documentation's Settings page lists them all; a variable of your own takes "
        "another prefix)"
    )


def test_a_keyword_one_slip_from_a_setting_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given `Settings(data_dir=..., playbok_file=...)` (a slip of playbook_file) in code,
    Then it raises a ConfigError naming the setting meant, as a misspelt variable does: it was
    ignored, and the packaged playbook planned instead. The environment is read as before: the
    settings' variables, conventional names, and another program's `PLANGATE_*` variable.
    """
    monkeypatch.setenv("PLANGATE_NAMESPACE", "fromenv")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PLANGATE_ACME_CRM_URL", "https://crm.example")
    playbook = tmp_path / "playbook.yaml"

    with pytest.raises(ConfigError) as refused:
        Settings(data_dir=tmp_path, playbok_file=playbook)  # type: ignore[call-arg]
    read = Settings(data_dir=tmp_path, playbook_file=playbook)

    assert str(refused.value) == (
        "playbok_file is not a setting plangate reads; did you mean playbook_file? (the "
        "documentation's Settings page lists them all)"
    )
    assert (read.playbook_file, read.namespace) == (playbook, "fromenv")
    assert Settings().data_dir == tmp_path / "xdg" / "plangate"


def test_another_unknown_plangate_variable_is_said_and_the_command_runs(tmp_path: Path) -> None:
    """A tool's own `PLANGATE_*` variable, or one a newer plangate reads, is a warning only."""
    result = plangate_in(tmp_path, "db", "upgrade", PLANGATE_ACME_CRM_URL="https://crm.example")

    assert result.returncode == 0, result.stderr
    assert "PLANGATE_ACME_CRM_URL: no plangate setting reads it" in result.stderr


@pytest.mark.parametrize(
    ("key", "variable"),
    [("intake-token", "PLANGATE_INTAKE_TOKEN"), ("session-secret", "PLANGATE_SESSION_SECRET")],
)
def test_the_placeholder_secrets_deploy_ships_are_refused(
    tmp_path: Path, key: str, variable: str
) -> None:
    """Given deploy/kubernetes/secret.yaml applied as shipped,
    When a process reads its placeholder intake token or session secret,
    Then it exits 2 saying to set a secret of its own: `CHANGE-ME` was taken as the intake
    token (anyone could submit goals) and the placeholder session secret signed sessions.
    """
    shipped = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "secret.yaml").read_text())
    secrets = next(doc for doc in shipped if doc["metadata"]["name"] == "plangate-secrets")

    result = plangate_in(tmp_path, "db", "upgrade", **{variable: secrets["stringData"][key]})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {variable}: is still deploy/'s placeholder; set a secret of your own: "
        "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    ]


@pytest.mark.parametrize(
    "address", ["127.0.0.1:8000/v1", "ftp://models/v1", "http://host:99999/v1"]
)
def test_a_model_server_address_that_cannot_work_stops_a_planner_at_start(
    tmp_path: Path, address: str
) -> None:
    """Given OPENAI_BASE_URL without a scheme (or another scheme, a bad port),
    When a planner worker starts, Then it exits 2 in one line saying how to write it: it
    started, and failed every goal after two retries as a connection that "broke while it
    answered", blaming the network."""
    result = plangate_in(tmp_path, "worker", "planner", OPENAI_BASE_URL=address)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: OPENAI_BASE_URL: {address!r} is no model server address; give one with its "
        "scheme, like http://127.0.0.1:8000/v1 (or unset it for OpenAI's)"
    ]


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:8000/v1\n", " http://127.0.0.1:8000/v1", "http://h/v1 "]
)
def test_a_model_server_address_with_a_space_or_a_line_break_stops_a_planner_at_start(
    tmp_path: Path, address: str
) -> None:
    """A trailing line break ended in an 84-line traceback from the SDK; a space passed the
    check and went into the URL as %20, every goal failing as "cannot reach"."""
    result = plangate_in(tmp_path, "worker", "planner", OPENAI_BASE_URL=address)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: OPENAI_BASE_URL: {address!r} holds a space, a line break or a control "
        "character; remove it"
    ]
