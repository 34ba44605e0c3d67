"""``dva serve``: the gallery search engine over HTTP, with a web page."""

from dva.serve.app import ServeSettings, create_app, server_config

__all__ = ["ServeSettings", "create_app", "server_config"]
