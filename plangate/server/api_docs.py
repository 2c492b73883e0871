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


def complete_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Add to each API operation the errors every route answers alike, and its token's scheme.

    Errors as `{"error": ...}`; a route that takes a token, the bearer scheme it is sent in.

    A client generated from the document broke on them: the 429 (with Retry-After) of any
    route that takes a token, the 413/415/400 of any that reads a body; and FastAPI's own 422
    for a bad parameter is documented as `{"detail": [...]}`, which plangate never sends.
    """
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            for code, answer in answers.items():
                if code.startswith(("4", "5")):
                    answer["content"] = error
            added = {"413": "Too large", "415": "Not JSON", "400": "Not readable"}
            if "requestBody" not in operation:
                added = {}
            if "401" in answers:
                added["429"] = "Too many failed attempts from this address: see Retry-After"
                operation.setdefault("security", [{BEARER: []}])
            for code, description in added.items():
                answers.setdefault(code, {"description": description, "content": error})
            if "429" in answers:
                answers["429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
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
