"""What an MCP server answers over streamable HTTP, read within a bound.

The SDK bounds each event of an SSE stream, but reads a JSON answer whole (`response.aread()`):
a server answering gigabytes fills the executor's memory within its timeout. Here a JSON answer
(anything but an event stream) is cut off past `MAX_ANSWER_BYTES`, with an error the SDK turns
into the call's failure at once. The client asks for no compression (`Accept-Encoding:
identity`); a compressed answer is refused, since its size says nothing of what it inflates to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import httpx2

MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The most one JSON answer of an MCP server may take; a tool's output is kept up to 256 KiB."""


class AnswerRefused(httpx2.StreamError):
    """An answer over its bound, or compressed though the client asked for none.

    A StreamError: the SDK answers the call with a parse error at once, rather than waiting
    for its timeout.
    """


async def bound_answer(response: httpx2.Response) -> None:
    """Read an answer (an event stream aside) within the bound, uncompressed: a response hook.

    A hook, not a transport: a client given a transport of its own ignores the proxy settings
    of the environment (`HTTPS_PROXY`, `NO_PROXY`).
    """
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    raw = cast("httpx2.AsyncByteStream", response.stream)  # an async client's
    response.stream = _Capped(raw, encoding)


class _Capped(httpx2.AsyncByteStream):
    def __init__(self, raw: httpx2.AsyncByteStream, encoding: str) -> None:
        self._raw = raw
        self._encoding = encoding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._encoding != "identity":
            raise AnswerRefused(
                f"the MCP server answered compressed ({self._encoding[:40]}) though asked "
                "for no compression; configure it to answer as asked"
            )
        size = 0
        async for chunk in self._raw:
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise AnswerRefused(
                    f"the MCP server's answer is over {MAX_ANSWER_BYTES} bytes, more than "
                    "plangate reads; make the tool return less (a page, a reference)"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._raw.aclose()
