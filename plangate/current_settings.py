"""The settings the environment holds now, for code that is given none: tools, spans, fault points.

They ask on every call, so the answer is remembered and read again only when the environment
changed. With `plangate.config`, this is the one module that reads plangate's variables.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading

from pydantic import ValidationError

from plangate.config import Settings, settings_error, variable_name
from plangate.errors import ConfigError

# The environment variables Settings reads, upper-cased (pydantic-settings ignores their case).
_VARIABLES = frozenset(variable_name(field) for field in Settings.model_fields)


class _Current:
    """The settings last read, the variables they were read from, and the environment then."""

    lock = threading.Lock()
    read_from: tuple[tuple[str, str], ...] | None = None
    environment: object = None
    settings: Settings | None = None


def _environment() -> object:
    """Return a snapshot of the whole environment that compares in about a microsecond.

    On CPython, `os.environ._data` holds the variables still encoded: copying it costs far less
    than decoding every name and value, which took ~20 µs on every fault point and span.
    """
    encoded = getattr(os.environ, "_data", None)
    return dict(encoded) if isinstance(encoded, dict) else tuple(os.environ.items())


def current_settings() -> Settings:
    """Return the settings the environment holds now, for code that is given none (don't modify).

    Read again whenever one of the variables changed (a test's `monkeypatch.setenv` included),
    else the last ones: reading them costs milliseconds, and tools, spans and fault points ask
    on every call. ConfigError names an invalid variable.
    """
    environment = _environment()
    with _Current.lock:
        if _Current.settings is not None and _Current.environment == environment:
            return _Current.settings
    # Only the variables Settings reads: this is the one place that reads the environment
    # for them, besides pydantic-settings itself.
    variables = tuple(
        (name, value) for name, value in os.environ.items() if name.upper() in _VARIABLES
    )
    with _Current.lock:
        if _Current.settings is not None and _Current.read_from == variables:
            _Current.environment = environment  # another variable changed: still the same
            return _Current.settings
    try:
        settings = Settings()
    except ValidationError as exc:
        raise settings_error(exc) from exc
    with _Current.lock:
        _Current.read_from, _Current.environment, _Current.settings = (
            variables,
            environment,
            settings,
        )
    return settings


def check_variable_names() -> list[str]:
    """Refuse a `PLANGATE_*` variable no setting reads that is one slip from one that does.

    `PLANGATE_POLICY_FLIE` was ignored: the gate decided by the packaged default policy, which
    approves reads unattended, and said so only at info level. So was `PLANGATE_POLICY`, a
    setting's name without its suffix, which the spelling match missed. Return the other
    unknown `PLANGATE_*` names (a tool's own variable, one a newer plangate reads), for a
    warning.
    """
    unknown = sorted(
        name.upper()
        for name in os.environ
        if name.upper().startswith("PLANGATE_") and name.upper() not in _VARIABLES
    )
    for name in unknown:
        meant = _meant(name)
        if meant:
            raise ConfigError(
                f"{name} is not a setting plangate reads; did you mean {meant}? "
                "(the documentation's Settings page lists them all; a variable of your own "
                "takes another prefix)"
            )
    return unknown


def _meant(name: str) -> str | None:
    """Return the setting `name` is one slip from, or lacks the suffix of, if just one."""
    prefix = len("PLANGATE_")
    ours = sorted(known for known in _VARIABLES if known.startswith("PLANGATE_"))
    # Compared past the prefix, which every name shares.
    close = difflib.get_close_matches(name[prefix:], [k[prefix:] for k in ours], n=1, cutoff=0.8)
    if close:
        return f"PLANGATE_{close[0]}"
    # `PLANGATE_POLICY` for `PLANGATE_POLICY_FILE`: too short a name for the match above. Only
    # one such setting: `PLANGATE_HTTP` could mean any of four, and may be a tool's own.
    lacking = [known for known in ours if known.rsplit("_", 1)[0] == name]
    return lacking[0] if len(lacking) == 1 else None


def settings_from_environment(**values: object) -> Settings:
    """Return the settings the environment holds, with `values` over them; ConfigError if wrong.

    What every command and a `Client()` given no settings start from: a variable one slip from
    a setting is refused (`check_variable_names`), as an invalid value is; another unknown
    `PLANGATE_*` name is logged as a warning.
    """
    unknown = check_variable_names()
    if unknown:
        logging.getLogger("plangate").warning(
            "%s: no plangate setting reads %s",
            ", ".join(unknown),
            "it" if len(unknown) == 1 else "them",
        )
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise settings_error(exc) from exc
