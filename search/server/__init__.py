"""The rerank API over HTTP (Cohere's ``/v1/rerank``, with reasoning): its wire format (``protocol``) and routes
(``routes``), served beside the page by app.py and alone by ``python -m search serve``."""

from search.server.routes import ApiState, api_routes, headless_app

__all__ = ["ApiState", "api_routes", "headless_app"]
