"""/docs: the OpenAPI explorer, served from this process (it works without internet).

FastAPI's default page loads Swagger UI from a CDN, so it is blank on a closed network; the
assets (Swagger UI 5, which reads OpenAPI 3.1) come from the `fastapi-offline` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from plangate.server.goal_bodies import ErrorBody

ASSETS = "/docs/assets"
# Only the files: its FastAPI subclass is not used, plangate's app is plain FastAPI.
_STATIC = Path(fastapi_offline.__file__).parent / "static"


def install_api_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs over the app's OpenAPI document, with local assets."""
    app.mount(ASSETS, StaticFiles(directory=_STATIC), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )


BEARER = "bearer"  # the one security scheme: every token is sent as a bearer token
Responses = dict[int | str, dict[str, Any]]
ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}

# What each refusal means, said once for every route that may answer it.
_SAID = {
    400: "Not readable: the body is not a JSON object",
    401: "No token, or not one this server knows: send `Authorization: Bearer <token>`",
    403: "Your reviewer lacks the role the hold asks for",
    404: "No such goal or plan",
    408: "The body took too long to arrive",
    409: "It changed meanwhile (decided, edited, or a key reused): read it again",
    413: "Too large",
    415: "Not JSON, or encoded (send UTF-8 JSON, no Content-Encoding)",
    422: "A parameter or the body is refused: the error says which and why",
    429: "Too many failed attempts from this address: see Retry-After",
    503: "The store does not answer, or refuses work for now (or the reviewers file cannot be "
    "read): try again after Retry-After",
}
# Any route that reads a body may answer these; a read answers none of them.
_BODY = (400, 408, 413, 415, 422)


def refusals(*codes: int) -> Responses:
    """Return a route's `responses` for these refusals, each the one error body, described once."""
    return {code: {"model": ErrorBody, "description": _SAID[code]} for code in codes}


def named_body_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Move the models a request body's schema refers to (`$defs`) into the named schemas."""
    named = schema.setdefault("components", {}).setdefault("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for kind in operation.get("requestBody", {}).get("content", {}).values():
                named.update(kind.get("schema", {}).pop("$defs", {}))
    return schema


def complete_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Add to each API operation the errors every route answers alike, and its token's scheme.

    Errors as `{"error": ...}`; a route that takes a token, the bearer scheme it is sent in.

    A client generated from the document broke on them: the 429 (with Retry-After) of any
    route that takes a token, the 400/408/413/415/422 of any that reads a body (and of those
    only: reads listed them); the 503 with Retry-After; and FastAPI's own 422 for a bad
    parameter is documented as `{"detail": [...]}`, which plangate never sends.
    """
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            added = [str(code) for code in _BODY] if "requestBody" in operation else []
            if "401" in answers:
                added.append("429")
                operation.setdefault("security", [{BEARER: []}])
            for code in added:
                answers.setdefault(code, {"description": _SAID[int(code)]})
            for code, answer in answers.items():
                if code.startswith(("4", "5")):
                    answer["content"] = ERROR_BODY
                if code in ("429", "503"):
                    answer["headers"] = _RETRY_AFTER
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`: the intake token "
        "(PLANGATE_INTAKE_TOKEN) to submit and follow goals, or a reviewer's token "
        "(`plangate reviewers add`)",
    }
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return schema
