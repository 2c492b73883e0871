"""Headers every answer carries: nothing cached, no framing, and the pages run no script.

The review pages are server-rendered forms with no JavaScript, so their Content-Security-Policy
allows none (an injected `<script>` would not run even if escaping failed), only the inline
styles of `base.html`; `frame-ancestors 'none'` stops another site from framing a page to
trick a click. Answers hold reviewers' and goals' data: `no-store` keeps a page out of the
browser's cache, so Back after logging out shows nothing. The API explorer (/docs) runs Swagger
UI's own script and its assets may be cached; it is still never framed.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
DOCS_POLICY = "frame-ancestors 'none'"


def security_headers(path: str, content_type: str, docs_path: str = "/docs") -> dict[str, str]:
    """Return the headers above for an answer of `content_type` to a request for `path`.

    The one definition of them: the app's middleware adds these, and so does the port `serve`
    answers on itself while it waits for a migration (a plain standard library server).
    """
    in_docs = path == docs_path or path.startswith(docs_path + "/")
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    if not in_docs:
        headers["Cache-Control"] = "no-store"
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = DOCS_POLICY if in_docs else PAGE_POLICY
    return headers


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP answer (not replacing any)."""

    def __init__(self, app: ASGIApp, *, docs_path: str = "/docs") -> None:
        self.app = app
        self.docs_path = docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the answer's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                content_type = headers.get("content-type", "")
                for name, value in security_headers(path, content_type, self.docs_path).items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
