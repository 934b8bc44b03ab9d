"""The rerank API over HTTP (Cohere's ``/v1/rerank``, with reasoning): its wire format (``protocol``) and routes
(``routes``), served beside the page by app.py and alone by ``python -m search serve``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_exports

if TYPE_CHECKING:
    from search.server.routes import ApiState, api_routes, headless_app

_EXPORTS = {
    "search.server.routes": ("ApiState", "api_routes", "headless_app"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["ApiState", "api_routes", "headless_app"]
