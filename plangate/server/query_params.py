"""A read of the API refuses a query parameter its route does not take, naming those it does.

`GET /api/v1/goals?source=urn:billing` answered every goal: the caller took the page for the
goals of that source. Checked from the parameters each route declares, so a route's new
parameter is known here without a word more.

Checked after the route's token (`token_first`): a caller without one was told which parameters
a route takes (422) before it was told to authenticate (401).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from plangate.errors import quoted
from plangate.server.errors import ApiError

_NAMED = 5  # unknown names quoted at most: whoever sent the query chose how many


def token_first(authenticate: Callable[[Request], object]) -> list[params.Depends]:
    """Return an API route's dependencies: `authenticate` (401 or 429), then its query check.

    FastAPI runs a route's dependencies in order, and calls one named again (the reviewer a
    route takes as a parameter) once: its answer is kept for the request.
    """
    return [Depends(authenticate), Depends(known_query_only)]


def known_query_only(request: Request) -> None:
    """Refuse (422) a GET whose query names a parameter its route does not take."""
    route = request.scope.get("route")
    if request.method not in ("GET", "HEAD") or not isinstance(route, APIRoute):
        return
    known = _query_names(route)
    unknown = sorted(set(request.query_params) - set(known))
    if not unknown:
        return
    named = ", ".join(quoted(name) for name in unknown[:_NAMED])
    more = f" and {len(unknown) - _NAMED} more" if len(unknown) > _NAMED else ""
    takes = f"takes only {', '.join(known)}" if known else "takes no query parameter"
    plural = "s" if len(unknown) > 1 else ""
    raise ApiError(
        422,
        f"unknown query parameter{plural} {named}{more}: GET {route.path} {takes}; "
        "leave out the others (nothing is filtered by them)",
    )


def _query_names(route: APIRoute) -> tuple[str, ...]:
    """Return the query parameters a route takes, its dependencies' too, as declared."""
    names: dict[str, None] = {}
    waiting: list[Dependant] = [route.dependant]
    while waiting:
        dependant = waiting.pop(0)
        names |= dict.fromkeys(param.alias for param in dependant.query_params)
        waiting += dependant.dependencies
    return tuple(names)
