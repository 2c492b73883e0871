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
        in_docs = scope["path"] == self.docs_path or scope["path"].startswith(self.docs_path + "/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("X-Frame-Options", "DENY")
                if not in_docs:
                    headers.setdefault("Cache-Control", "no-store")
                if headers.get("content-type", "").startswith("text/html"):
                    policy = DOCS_POLICY if in_docs else PAGE_POLICY
                    headers.setdefault("Content-Security-Policy", policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)
