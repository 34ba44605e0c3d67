"""``dva serve``: the gallery search engine over HTTP, with a web page."""

from dva.serve.app import IndexReloader, ServeSettings, create_app, server_config

__all__ = ["IndexReloader", "ServeSettings", "create_app", "server_config"]
