"""/docs: the OpenAPI explorer, served from this process (it works without internet).

FastAPI's default page loads Swagger UI from a CDN, so it is blank on a closed network; the
assets (Swagger UI 5, which reads OpenAPI 3.1) come from the `fastapi-offline` package.
"""

from __future__ import annotations

from pathlib import Path

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
