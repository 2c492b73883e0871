"""The addresses settings name: the broker's, the Jaeger UI's, the collector's; checked when read.

A URL that cannot work is refused in one line when the settings load, before anything is
stored: a port or a Redis database that is no number made a traceback after a goal was
already kept, and a Jaeger URL that is no address made links like `notaurl/trace/...`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp", "memory"})


def broker_scheme(url: str) -> str:
    """Return a broker URL's scheme, lowercased ("" if it names none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_broker_url(url: str) -> str:
    """Return `url` if plangate can use it as its broker; ValueError saying what to fix."""
    scheme = broker_scheme(url)
    if scheme not in BROKER_SCHEMES:
        raise ValueError(
            f"{url.split('://', 1)[0]!r} is not a broker plangate speaks; use "
            "redis://host:6379/0, amqp://user:password@host:5672// or memory://"
        )
    for each in url.split(";"):  # kombu's failover list: redis://h1/0;redis://h2/0
        parts = urlsplit(each.strip())
        try:
            parts.port  # noqa: B018 - read for its check: a port that is no number raises
        except ValueError:
            raise ValueError(
                "the broker URL's port is not a number from 1 to 65535 (redis://host:6379/0)"
            ) from None
        database = parts.path.strip("/")
        if scheme.startswith("redis") and database and not database.isdigit():
            raise ValueError(
                f"the Redis database in the broker URL is a number (redis://host:6379/0), "
                f"not {database[:40]!r}"
            )
    return url


def check_web_address(url: str) -> str:
    """Return `url` if it is an http(s) address (the Jaeger UI's); ValueError if not."""
    if not re.match(r"https?://[^\s/]+", url):
        raise ValueError(
            f"{url[:60]!r} is no web address; give the Jaeger UI's, e.g. http://jaeger:16686"
        )
    return url


def _http_address(url: str) -> bool:
    """Whether `url` is http or https with a host and, if it names one, a port that is one."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its check: a port that is no number raises
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def check_model_server_url(url: str) -> str:
    """Return `url` if the openai SDK can call it (http or https, a host); ValueError if not.

    Without a scheme, every goal failed, each after two retries, as a connection that "broke
    while it answered", though the worker had started with it.
    """
    if any(character.isspace() or not character.isprintable() for character in url):
        # A line break crashed the SDK; a space went into the URL as %20 ("cannot reach").
        raise ValueError(
            f"{url[:60]!r} holds a space, a line break or a control character; remove it"
        )
    if not _http_address(url):
        raise ValueError(
            f"{url[:60]!r} is no model server address; give one with its scheme, like "
            "http://127.0.0.1:8000/v1 (or unset it for OpenAI's)"
        )
    return url


def check_collector_url(variable: str, url: str) -> str:
    """Return `url` if an OTLP exporter can send to it; ValueError naming `variable` if not."""
    if not _http_address(url.strip()):
        raise ValueError(
            f"{variable}={url[:60]!r} is no collector address; give one like "
            "http://otel-collector:4318 (or unset it to export no spans)"
        )
    return url
