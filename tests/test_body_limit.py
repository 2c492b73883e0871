"""Every request body has a bound, taken before a route reads it or asks who is calling.

The review routes' JSON was parsed whole before their token was checked: 150 MiB sent with no
token grew `plangate serve` by 225 MiB. Now a body over a megabyte is refused with 413, however
it is sent, and the routes answer small requests as before. A review-page form that is not
UTF-8 is refused (400), not a server error.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from plangate.config import Settings
from plangate.server.body_limit import MAX_REQUEST_BYTES
from plangate.server.reviewers import Reviewer
from tests.support import serving_with_reviewers

TOKEN = "body-limit-token-0123456789abcdef"
APPROVE = "/api/v1/reviews/no-such-plan/approve"


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, int]]:
    """`plangate serve`'s app, with one reviewer; yield its host and port."""
    with serving_with_reviewers(settings, Reviewer.with_token("alice", TOKEN, ["finance"])) as at:
        yield at[0], at[1]


def post(
    server: tuple[str, int], path: str, body: bytes, *, chunked: bool = False, token: str = ""
) -> tuple[int, dict[str, str]]:
    """POST `body` (declared, or chunked in 64 KiB pieces); return the status and JSON answer."""
    connection = http.client.HTTPConnection(*server, timeout=30)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if chunked:
        pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
        connection.request("POST", path, body=pieces, headers=headers, encode_chunked=True)
    else:
        connection.request("POST", path, body=body, headers=headers)
    return answer_of(connection)


def declare_only(server: tuple[str, int], path: str, length: int) -> tuple[int, dict[str, str]]:
    """Send a POST's headers declaring `length` bytes, none of them; return what comes back."""
    connection = http.client.HTTPConnection(*server, timeout=30)
    connection.putrequest("POST", path)
    connection.putheader("content-type", "application/json")
    connection.putheader("content-length", str(length))
    connection.endheaders()
    return answer_of(connection)


def answer_of(connection: http.client.HTTPConnection) -> tuple[int, dict[str, str]]:
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def test_a_declared_body_over_the_bound_is_413_before_any_of_it_is_read(
    server: tuple[str, int],
) -> None:
    status, answer = declare_only(server, APPROVE, 150 * 1024 * 1024)

    assert status == 413, answer
    assert answer["error"].startswith("the request body is over 1024 KiB")


def test_a_streamed_body_over_the_bound_is_413_before_the_route_reads_it(
    server: tuple[str, int],
) -> None:
    too_big = b" " * MAX_REQUEST_BYTES + b"{}"

    status, answer = post(server, APPROVE, too_big, chunked=True, token=TOKEN)

    assert status == 413, answer
    assert answer["error"].startswith("the request body is over 1024 KiB")


def test_a_streamed_body_without_a_token_is_401_before_any_of_it_is_read(
    server: tuple[str, int],
) -> None:
    """The token is checked before the body: none of it is held for a caller without one."""
    too_big = b" " * MAX_REQUEST_BYTES + b"{}"

    status, answer = post(server, APPROVE, too_big, chunked=True)

    assert status == 401, answer
    assert answer["error"].startswith("send `Authorization: Bearer <token>`")


def test_a_small_body_reaches_the_route_as_before(server: tuple[str, int]) -> None:
    status, answer = post(server, APPROVE, json.dumps({"plan_hash": "x"}).encode())
    assert status == 401, answer

    decided = json.dumps({"plan_hash": "sha256:0"}).encode()
    status, answer = post(server, APPROVE, decided, token=TOKEN)
    assert status == 404, answer
    assert answer["error"].startswith("no plan 'no-such-plan'")


def test_goal_intake_keeps_its_own_tighter_bound(server: tuple[str, int]) -> None:
    status, answer = post(server, "/api/v1/goals", b"x" * (100 * 1024), chunked=True)

    assert status == 413, answer
    assert answer["error"] == "the body is over 64 KiB; send a shorter goal"


@pytest.mark.parametrize("form", [b"token=\xff\xfe", b"token=%ff%fe"], ids=["raw", "escaped"])
def test_a_form_that_is_not_utf8_is_400_not_a_server_error(
    server: tuple[str, int], form: bytes
) -> None:
    connection = http.client.HTTPConnection(*server, timeout=30)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    connection.request("POST", "/login", body=form, headers=headers)

    status, answer = answer_of(connection)

    assert status == 400, answer
    assert answer["error"] == "the form is not UTF-8; send it from the review page"


def test_a_body_still_arriving_after_its_time_is_408_and_the_connection_let_go() -> None:
    """Given a route behind the bound, and a client that sends ten bytes of the thousand it
    declares and then nothing,
    When the body's time (here 1 s) has passed, Then the answer is 408 saying to send the body
    at once: such a client held its connection, and the route waiting on it, for 40 s and more.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from plangate.server.body_limit import BodyLimit
    from tests.fleet import serving_app

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app = BodyLimit(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), seconds=1)
    with serving_app(app) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/echo")
        connection.putheader("content-length", "1000")
        connection.endheaders(b"0123456789")
        slow = answer_of(connection)
        whole = http.client.HTTPConnection(host, int(port), timeout=30)
        whole.request("POST", "/echo", body=b"x" * 1000)
        sent = answer_of(whole)

    assert slow == (408, {"error": "the request body took over 1 s to arrive; send it at once"})
    assert sent == (200, {"bytes": 1000})
