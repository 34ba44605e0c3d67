"""The ``--backend``, ``--qdrant-url`` and ``--collection`` options of ``dva index``, ``search`` and ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from dva.index.vectordb import QdrantGallery

BackendOpt = typer.Option(
    "faiss",
    "--backend",
    help="Where vectors are searched: faiss (the index's own file, one machine) or qdrant (a Qdrant server "
    "with --qdrant-url, else an embedded database in INDEX_DIR/qdrant). `dva index --backend qdrant` fills it.",
)
QdrantUrlOpt = typer.Option(
    None,
    "--qdrant-url",
    help="With --backend qdrant: http(s)://host:6333 of a Qdrant server or cluster; its API key is read from "
    "$QDRANT_API_KEY.",
)
CollectionOpt = typer.Option("dva", "--collection", help="With --backend qdrant: the collection of this index.")


def check_backend_options(backend: str, url: str | None, collection: str) -> None:
    """Refuse bad options, and an unreachable server, before any image is embedded."""
    from dva.errors import ConfigError
    from dva.index.vectordb import BACKENDS, QdrantConfig, check_server

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: choose from {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "faiss" and url is not None:
        raise ConfigError("--qdrant-url needs --backend qdrant")
    if backend == "qdrant" and url is not None:
        check_server(QdrantConfig(url=url, collection=collection))


def open_backend(
    index_dir: Path, backend: str, url: str | None, collection: str, *, create: bool = False
) -> QdrantGallery | None:
    """The vector database the options name, or None for FAISS (nothing to open)."""
    from dva.errors import ConfigError
    from dva.index.store import read_manifest
    from dva.index.vectordb import BACKENDS, QdrantConfig, QdrantGallery, embedded_config

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: choose from {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "faiss":
        if url is not None:
            raise ConfigError("--qdrant-url needs --backend qdrant")
        return None
    config = QdrantConfig(url=url, collection=collection) if url else embedded_config(index_dir, collection)
    return QdrantGallery(config, int(read_manifest(Path(index_dir))["embed_dim"]), create=create)
