"""``/docs`` (Swagger UI) and ``/redoc`` with their JavaScript and CSS served by the server itself,
from the ``fastapi-offline`` package's copies (part of the ``serve`` extra; Swagger UI 5, which
reads OpenAPI 3.1), so the pages work offline; FastAPI's default pages load them from a CDN and
are blank without internet."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
log = logging.getLogger("polytask.serve")


def swagger_ui_folder() -> Path | None:
    """The packaged Swagger UI and ReDoc files (None when ``fastapi-offline`` is not installed)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI) -> None:
    """``GET /docs`` and ``GET /redoc`` (their files under ``/docs-assets``); without
    ``fastapi-offline`` the pages fall back to FastAPI's CDN copies, with a warning."""
    folder = swagger_ui_folder()
    if folder is None:
        log.warning("fastapi-offline is not installed (pip install 'polytask[serve]'): /docs and /redoc load "
                    "their scripts from a CDN and are blank offline")
        swagger, redoc = {}, {}
    else:
        app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")
        swagger = {"swagger_js_url": f"{ASSETS}/swagger-ui-bundle.js", "swagger_css_url": f"{ASSETS}/swagger-ui.css",
                   "swagger_favicon_url": f"{ASSETS}/favicon.png"}
        redoc = {"redoc_js_url": f"{ASSETS}/redoc.standalone.js", "redoc_favicon_url": f"{ASSETS}/favicon.png",
                 "with_google_fonts": False}
    openapi = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi, title=f"{app.title} - docs", **swagger)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi, title=f"{app.title} - ReDoc", **redoc)


__all__ = ["add_docs"]
