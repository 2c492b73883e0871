"""The one redaction point: every secret plangate knows, taken out of text before it leaves.

Secrets are registered once for the whole process: from the settings and the environment as
they are read (`register_settings`, `register_environment`: API keys, tokens, the session
secret, passwords in the broker and database URLs, `OTEL_EXPORTER_OTLP_HEADERS`), and by
integrations when they load a key (`register_secret`). `redact(text)` replaces each one with
`[redacted]` in every form an upstream server may quote it back in: raw, URL-encoded, JSON- or
Python-escaped (twice too: JSON quoted inside JSON), HTML-escaped, and inside base64 (a Basic
`Authorization` header). A password in any URL a text quotes (`scheme://user:password@`) is
redacted too, registered or not. Everything that writes outward calls it: log records
(`plangate.logs`), exported spans (`plangate.telemetry`), audit entries and goal reasons
(`plangate.store`), dead-letter reasons, HTTP error answers, and the texts quoted from model,
webhook, MCP, PagerDuty and Jira servers.

A value shorter than `MIN_SECRET_CHARS` is not taken for a secret: blanking every "guest" or
"true" would garble text and protect nothing. Neither is a URL's password equal to its user
name (`plangate:plangate@`), which the URL shows anyway.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6

# Variable and setting names whose values are secrets, and names whose values are URLs.
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?|AUTH)$", re.I
)
_URL_NAME = re.compile(r"(?:^|_)(?:URL|URI|DSN)$", re.I)
_HEADERS_NAME = re.compile(r"^OTEL_EXPORTER_OTLP_(?:TRACES_)?HEADERS$")
_SECRET_QUERY = re.compile(
    r"(?:token|key|secret|password|passwd|pass|sig|signature|auth|credentials?)$", re.I
)
_AUTH_SCHEME = re.compile(r"^\s*(?:Bearer|Basic|Token|ApiKey)\s+(\S+)\s*$", re.I)
# A password in any URL a text quotes (`scheme://user:password@host`): known or not, it is a
# credential (a tool's error naming its database, a server quoting its upstream). Not the
# user name, and not a "password" equal to it, which the URL shows anyway.
_URL_PASSWORD = re.compile(r"(://([^\s/:@\[\]<>\"'`]*)):([^\s/@<>\"'`]+)@")
# Credentials in text by their shape, registered or not: an Authorization value, and a value
# after a name that says it is one (`password=`, `"token": "`, `api_key:`). For the texts that
# end somewhere people read and the audit log keeps for good (errors, reasons, logs, entries);
# not for content that flows on (a tool's output a later step reads, a model's plan), where
# only the secrets plangate knows are taken out.
_CREDENTIAL_SHAPES = re.compile(
    r"(\b(?:bearer|basic)\s+)[a-z0-9._~+/-]{8,}=*"
    r"|(\b(?:[a-z0-9]+_)*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|"
    r"(?:access|refresh|auth|id)[_-]?token|token)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;{}]{4,}",
    re.IGNORECASE,
)
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")


class _Registry:
    """The known secrets and one compiled pattern of all their forms (swapped whole)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secrets: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None
        self.environment_read = False


_registry = _Registry()


def register_secret(value: str | SecretStr | SecretBytes | bytes | None) -> None:
    """Make `value` a secret: from now on it is redacted wherever plangate writes outward."""
    register_secrets([value])


def register_secrets(values: Iterable[str | SecretStr | SecretBytes | bytes | None]) -> None:
    """Register several secrets at once (one rebuild of the pattern)."""
    found = {text for text in map(_plain, values) if text is not None}
    found = {text.strip() for text in found} | found
    fresh = {text for text in found if len(text) >= MIN_SECRET_CHARS}
    with _registry.lock:
        if fresh <= _registry.secrets:
            return
        secrets = _registry.secrets | fresh
        forms = sorted({form for secret in secrets for form in _forms(secret)}, key=len)
        forms.reverse()  # the longest first: a form inside another must not win
        _registry.pattern = re.compile("|".join(re.escape(form) for form in forms))
        _registry.secrets = secrets


def register_url(url: str | None) -> None:
    """Register the password and the secret-looking query values of a URL (a broker's, a DB's)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return  # not a URL we can read; nothing to learn from it
    found: list[str] = []
    if password and password != username:
        found += [password, unquote(password)]
    found += [value for name, value in parse_qsl(parts.query) if _SECRET_QUERY.search(name)]
    register_secrets(found)


def register_header(value: str | None) -> None:
    """Register an HTTP header value that carries a credential (and the token after its scheme)."""
    if not value:
        return
    scheme = _AUTH_SCHEME.match(value)
    register_secrets([value, scheme.group(1) if scheme else None])


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Register what the environment holds under secret names, URLs' passwords, OTLP headers."""
    # The raw environment, not Settings: a secret may sit in any variable, not only plangate's
    # (an integration's token, OTLP headers, a tool's key), and each must be redacted anyway.
    environ = os.environ if environ is None else environ
    _registry.environment_read = True
    secrets: list[str] = []
    for name, value in environ.items():
        if _SECRET_NAME.search(name):
            secrets.append(value)
        elif _URL_NAME.search(name):
            register_url(value)
        elif _HEADERS_NAME.match(name):
            # `key=value,key2=value2`, values URL-encoded (the OTLP exporter's format)
            for pair in value.split(","):
                header = unquote(pair.partition("=")[2])
                register_header(header)
    register_secrets(secrets)


def register_settings(settings: BaseModel) -> None:
    """Register every secret field of a settings object, its URLs' passwords, and the environment.

    A secret field is a `SecretStr` (or `SecretBytes`) or a field named like a key or token.
    """
    register_environment()
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        secret = isinstance(value, str) and bool(_SECRET_NAME.search(name))
        if secret or isinstance(value, SecretStr | SecretBytes):
            register_secret(value)
        elif isinstance(value, str) and _URL_NAME.search(name):
            register_url(value)


# A text holding the marker itself, as written: kept apart from a redaction in the audit log,
# where `[redacted]` stands for any secret (`audit_recorded.shown_as_recorded`). Unescaped,
# a submitter or reviewer who wrote it opened a hole any text could be swapped into.
LITERAL_REDACTED = "[redacted\u200b]"


def escape_marker(text: str) -> str:
    """Return `text` with the redaction marker, written as such, told apart from a redaction."""
    return text.replace(REDACTED, LITERAL_REDACTED) if REDACTED in text else text


def redact(text: str) -> str:
    """Return `text` with every known secret and every credential by its shape redacted.

    Known: in every form (`redact_known`); by shape: a URL's password, an Authorization value,
    a value named as a password, token, secret or key.
    """
    text = redact_known(text)
    return _CREDENTIAL_SHAPES.sub(_shape_redacted, text) if text else text


def redact_known(text: str) -> str:
    """Return `text` with every known secret, in every form, and URLs' passwords redacted."""
    if not _registry.environment_read:
        register_environment()
    pattern = _registry.pattern
    if not text:
        return text
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _URL_PASSWORD.sub(_url_password_redacted, text) if "://" in text else text


def _shape_redacted(match: re.Match[str]) -> str:
    return f"{match.group(1) or match.group(2)}{REDACTED}"


def _url_password_redacted(match: re.Match[str]) -> str:
    before, user, password = match.group(1), match.group(2), match.group(3)
    if password in (user, REDACTED):
        return match.group(0)
    return f"{before}:{REDACTED}@"


def quoted(text: str, limit: int = 300) -> str:
    """Return what a remote party said, fit to quote: one line, redacted, then cut to `limit`.

    Redacted before it is cut, so no prefix of a secret survives at the cut.
    """
    line = redact(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


def redact_json(value: Any) -> Any:
    """Return a JSON value with every known secret taken out of its strings (keys too).

    For content a remote party wrote (a model's plan, a tool's output): the value itself is
    returned when no secret is in it, which is nearly always, after one search of its text.
    """
    if not _registry.environment_read:
        register_environment()
    pattern = _registry.pattern
    # ASCII-escaped, as one of each secret's registered forms is: a secret holding both a
    # non-ASCII letter and a character JSON escapes would match no form of a mixed dump.
    text = json.dumps(value, default=str)
    if (pattern is None or not pattern.search(text)) and not _has_url_password(text):
        return value
    return _redacted(value)


def _has_url_password(text: str) -> bool:
    return "://" in text and any(
        match.group(3) not in (match.group(2), REDACTED) for match in _URL_PASSWORD.finditer(text)
    )


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_known(value)
    if isinstance(value, dict):
        return {redact_known(str(key)): _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def is_secret(value: str) -> bool:
    """Return whether `value` is a registered secret (for tests and diagnostics)."""
    return value in _registry.secrets


def _plain(value: str | SecretStr | SecretBytes | bytes | None) -> str | None:
    if isinstance(value, SecretStr | SecretBytes):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value or None


def _forms(secret: str) -> set[str]:
    """Return every form in which a text may quote `secret`, each long enough to search for."""
    direct = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        html.escape(secret),
        html.escape(secret, quote=False),
    }
    escaped = set(direct)
    for form in direct:
        # JSON (also with `\/`) and Python repr, once and twice: JSON quoted inside JSON.
        for once in (_json_escaped(form), _repr_escaped(form)):
            escaped |= {once, once.replace("/", "\\/"), _json_escaped(once), _repr_escaped(once)}
    forms = set(escaped)
    for form in escaped:
        forms.add(_PERCENT.sub(lambda m: m.group(0).lower(), form))
        forms.add(_UNICODE_ESCAPE.sub(lambda m: m.group(0).upper().replace("\\U", "\\u"), form))
    forms |= _base64_forms(secret.encode("utf-8", errors="surrogatepass"))
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


def _repr_escaped(text: str) -> str:
    return repr(text)[1:-1]


def _base64_forms(data: bytes) -> set[str]:
    """Return `data` in base64 alone, and the part that is the same at any offset in a stream.

    A 4-character group encodes 3 bytes; at offset 0, 1 or 2 of a longer value (as in
    `user:secret`), only the groups made of the secret's bytes alone are fixed: those are kept.
    """
    forms = {base64.b64encode(data).decode("ascii")}
    forms.add(next(iter(forms)).rstrip("="))
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode("ascii")
        first, last = -(-shift // 3), (shift + len(data)) // 3
        if last - first >= 2:  # at least 8 characters: shorter would match by chance
            forms.add(encoded[4 * first : 4 * last])
    forms |= {form.translate(_URLSAFE) for form in forms}
    return forms


_URLSAFE = str.maketrans("+/", "-_")
