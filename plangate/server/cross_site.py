"""Whether a browser sent a request from another site (a forged login, for one).

The forms of a session carry a CSRF token, but the login form comes before any session: a page
elsewhere could post its own reviewer's token to /login and log the victim's browser in as
that reviewer, whose name then goes on every decision the victim makes. SameSite cookies do not
stop it (they limit which cookies a request carries, not which it sets). Browsers say where a
request came from: `Sec-Fetch-Site` (Fetch Metadata), else `Origin`; as OWASP advises, a
request that says another site is refused, and one that says nothing (an old browser, curl) is
let through.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

_OWN_SITE = frozenset({"same-origin", "none"})  # "none": the person typed or bookmarked it


def sent_from_another_site(request: Request, public_url: str) -> bool:
    """Return True if the browser says the request was made by a page of another origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in _OWN_SITE
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin.strip().lower() not in {_origin(str(request.base_url)), _origin(public_url)}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
