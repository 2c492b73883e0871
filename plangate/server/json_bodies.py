"""Reading a JSON request body: bounded, strict and with one set of answers for every route.

Goal intake and the review API read their bodies here, with the one strict JSON reader
(`schemas.decoding.strict_json_loads`): a repeated key, NaN, JSON nested too deep or text that
cannot be stored (a lone surrogate, NUL) is refused before a model sees it. The review routes'
bodies were parsed by FastAPI, which let the last of two equal keys win and stored NUL as
U+FFFD; they now answer as intake does: 415, 400, 413 or 422, each saying what to send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from plangate.server.body_limit import MAX_REQUEST_BYTES
from plangate.server.errors import ApiError
from schemas.decoding import JsonRefused, strict_json_loads

JSON = "application/json"
SCHEMAS = "#/components/schemas/"
MAX_BODY_BYTES = 64 * 1024
_PARSE_LIMIT = MAX_REQUEST_BYTES  # what intake parses is bounded lower, by its route
_STATUS = {"size": 413, "syntax": 400, "depth": 422, "text": 422}
ModelT = TypeVar("ModelT", bound=BaseModel)


def media_type(headers: Mapping[str, str]) -> str:
    """Return the request's media type without parameters, lower-cased ('' if none)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int = MAX_BODY_BYTES, shorter: str = "goal") -> bytes:
    """Return the body, refusing (413) one over `limit` bytes before reading all of it.

    Refused first (415): a body in a content encoding (gzip read as text said "not UTF-8") or
    a charset other than UTF-8 (read as UTF-8 all the same).
    """
    _refuse_encodings(request.headers)
    too_big = ApiError(413, f"the body is over {limit // 1024} KiB; send a shorter {shorter}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _refuse_encodings(headers: Mapping[str, str]) -> None:
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        said = f"the body is {encoding[:40]!r}-encoded; send it unencoded (no Content-Encoding)"
        raise ApiError(415, said)
    for parameter in headers.get("content-type", "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise ApiError(415, f"the body's charset is {charset[:40]!r}; send UTF-8")


def json_value(body: bytes, what: str) -> Any:
    """Return the JSON `body` holds; ApiError saying what to send if it is refused."""
    try:
        return strict_json_loads(body, max_bytes=_PARSE_LIMIT, allow_nul=False)
    except JsonRefused as exc:
        if exc.problem == "syntax":
            said = str(exc)
            # "body is not valid JSON: ..." said of `what` once (it read "not valid JSON" twice).
            said = said[5:] if said.startswith("body ") else f"is not valid JSON ({said})"
            raise ApiError(400, f"{what} {said}; send a JSON object") from exc
        raise ApiError(_STATUS[exc.problem], f"{what} is refused: {exc}") from exc


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """Return the JSON object `body` holds (400 if it holds another JSON value)."""
    value = json_value(body, what)
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def problems_of(exc: ValidationError) -> str:
    """Return a model's validation errors as one line: `field: what is wrong; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def json_body(model: type[ModelT]) -> Callable[[Request], Awaitable[ModelT]]:
    """Return a dependency reading a route's body as `model`, as strictly as goal intake.

    No body at all is an empty object: a model whose fields all have defaults needs none.
    """

    async def parsed(request: Request) -> ModelT:
        body = await read_body(request, _PARSE_LIMIT, "request")  # as any request: BodyLimit
        if not body.strip():
            fields: dict[str, Any] = {}
        elif (kind := media_type(request.headers)) != JSON:
            raise ApiError(415, f"unsupported content type {kind or '(none)'!r}; send {JSON}")
        else:
            fields = json_object(body, "the body")
        try:
            return model.model_validate(fields)
        except ValidationError as exc:
            raise ApiError(422, f"invalid request: {problems_of(exc)}") from exc

    return parsed


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """Return the route keywords documenting that it reads `model` (FastAPI sees no body).

    Required unless every field of `model` has a default: no body is read as `{}`
    (`json_body`), which such a model takes and any other refuses.
    """
    needed = any(field.is_required() for field in model.model_fields.values())
    # Its models in `$defs`, named where a reference finds them: `named_body_schemas` moves
    # them there (a `#/$defs/...` reference is resolved against the whole document).
    schema = model.model_json_schema(ref_template=f"{SCHEMAS}{{model}}")
    body = {"required": needed, "content": {JSON: {"schema": schema}}}
    return {"openapi_extra": {"requestBody": body}}
