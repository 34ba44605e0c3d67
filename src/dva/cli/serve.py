"""``dva serve``: the search engine over HTTP, with a web page at ``/``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from dva.cli._vectordb import BackendOpt, CollectionOpt, QdrantUrlOpt, open_backend

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    index_dir: Path = typer.Option(..., "--index", help="Index directory written by `dva index`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port"),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="DVA_API_KEY", help="Require this key (X-API-Key header) on every API call."
    ),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest accepted upload."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest accepted image (width x height)."),
    max_k: int = typer.Option(100, "--max-k", help="Most matches one request may ask for."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto, ..."),
    reload_seconds: float = typer.Option(
        2.0,
        "--reload-seconds",
        min=0.0,
        help="Look for a new version of the index (written by `dva index`) this often and serve it; 0: never.",
    ),
    backend: str = BackendOpt,
    qdrant_url: str | None = QdrantUrlOpt,
    collection: str = CollectionOpt,
) -> None:
    """Serve POST /search, POST /search/embedding, GET /images/{id}, GET /healthz, docs at /docs, page at /."""
    import uvicorn

    from dva.errors import ConfigError
    from dva.index import Searcher
    from dva.serve import ServeSettings, create_app, server_config

    if api_key == "" or (api_key is None and os.environ.get("DVA_API_KEY") == ""):  # click drops an empty variable
        raise ConfigError(
            "--api-key / DVA_API_KEY is set but empty, which would turn authentication off: "
            "give a key, or unset it to serve without one"
        )
    if host not in LOOPBACK and not api_key:
        print(
            f"warning: serving {index_dir} on {host} without --api-key: anyone who can reach it can search "
            "and view the gallery",
            file=sys.stderr,
        )
    settings = ServeSettings(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_image_pixels=max_pixels,
        max_k=max_k,
        api_key=api_key,
        reload_seconds=reload_seconds,
    )
    _log_reloads()
    vectors = open_backend(index_dir, backend, qdrant_url, collection)  # before the model: fail fast
    app = create_app(Searcher(index_dir, device=device, backend=vectors), settings)
    uvicorn.Server(server_config(app, settings, host=host, port=port, log_level="info")).run()


def _log_reloads() -> None:
    """Show the reloader's messages (a swap, a failed reload) in the server's log, as uvicorn's are."""
    log = logging.getLogger("dva.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
