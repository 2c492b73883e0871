"""The settings the environment holds now, for code that is given none: tools, spans, fault points.

They ask on every call, so the answer is remembered and read again only when the environment
changed. With `plangate.config`, this is the one module that reads plangate's variables.
"""

from __future__ import annotations

import difflib
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
    approves reads unattended, and said so only at info level. Return the other unknown
    `PLANGATE_*` names (a tool's own variable, one a newer plangate reads), for a warning.
    """
    unknown = sorted(
        name.upper()
        for name in os.environ
        if name.upper().startswith("PLANGATE_") and name.upper() not in _VARIABLES
    )
    prefix = len("PLANGATE_")
    ours = [name[prefix:] for name in _VARIABLES if name.startswith("PLANGATE_")]
    for name in unknown:  # compared past the prefix, which every name shares
        meant = difflib.get_close_matches(name[prefix:], ours, n=1, cutoff=0.8)
        if meant:
            raise ConfigError(
                f"{name} is not a setting plangate reads; did you mean PLANGATE_{meant[0]}? "
                "(the documentation's Settings page lists them all; a variable of your own "
                "takes another prefix)"
            )
    return unknown
