"""Search a gallery held in Qdrant, a distributed vector database, instead of the local FAISS file.

FAISS in one process is the default and the fastest on one machine. Past the memory of one
machine, the vectors go to a Qdrant cluster: it shards and replicates a collection over nodes,
persists it, and serves many searchers at once. Why Qdrant rather than Milvus (install size,
embedded mode, measured latency and recall): docs/scale.md and ``bench/vectordb.py``.

::

    gallery = QdrantGallery(QdrantConfig(url="http://qdrant:6333", collection="photos"), embed_dim=384)
    searcher = dva.Searcher("photos-index", backend=gallery)   # the model from the index, vectors from Qdrant

The contract, like the FAISS file's: one collection per index, **point id = image id** of the
index directory (its row number), **vector = its embedding** (cosine distance), **payload = its
metadata row** (``{"path", "label", ...extra fields}``). The index directory stays the source of
truth: :func:`push_index` (``dva index --backend qdrant``) upserts its rows, and re-running it
rebuilds a lost or partial collection. Searches return the payload with each hit, so a serving
machine needs the model, not the gallery's embeddings.

Two modes, one client API: ``url`` for a server or cluster (API key from the environment
variable ``api_key_env``, never a command-line argument), or ``path`` for Qdrant's embedded
local mode (a folder, one process at a time; what the tests run and a laptop can use).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from dva.errors import ConfigError, DataError, MissingDependency

if TYPE_CHECKING:
    from dva.index.store import GalleryIndex

BACKENDS = ("faiss", "qdrant")
DEFAULT_COLLECTION = "dva"
DEFAULT_API_KEY_ENV = "QDRANT_API_KEY"
#: Points per upsert: one request of ~1.6 MB at 384-d, well under Qdrant's 32 MB request cap.
UPSERT_BATCH = 1000
#: Folder of the embedded database inside an index directory (``dva index --backend qdrant``
#: without ``--qdrant-url``).
EMBEDDED_FOLDER = "qdrant"
T = TypeVar("T")


class VectorBackend(Protocol):
    """What :class:`dva.Searcher` needs from a vector database (:class:`QdrantGallery` is one)."""

    embed_dim: int

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float, dict[str, Any]]]]: ...

    def get(self, image_id: int) -> dict[str, Any] | None: ...

    def describe(self) -> dict[str, Any]: ...


class DatabaseUnavailable(DataError):
    """The database cannot be reached, or refuses the request: the deployment's fault, not the
    query's (``dva serve`` answers 503, the CLI exits 2 with this one line)."""


@dataclass(frozen=True)
class QdrantConfig:
    """Where the collection lives: a server (``url``) or an embedded database folder (``path``)."""

    #: ``http(s)://host:port`` of a Qdrant server or cluster (REST port, 6333 by default).
    url: str | None = None
    #: Folder of Qdrant's embedded local mode, used when ``url`` is None.
    path: Path | None = None
    collection: str = DEFAULT_COLLECTION
    #: The environment variable that holds a server's API key (unset: no key is sent).
    api_key_env: str = DEFAULT_API_KEY_ENV
    #: Seconds a request to a server may take, connecting included.
    timeout: int = 10

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise ConfigError("qdrant: give either a server url (http://host:6333) or an embedded database path")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"qdrant url: expected http://host:port or https://host:port, got {self.url!r}")
        if not self.collection or not self.collection.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"qdrant collection: letters, digits, '-' and '_' only, got {self.collection!r}")
        if self.timeout < 1:
            raise ConfigError(f"qdrant timeout: at least 1 second, got {self.timeout}")

    @property
    def address(self) -> str:
        """The URL or folder, as errors and ``describe()`` name it."""
        return self.url if self.url is not None else str(self.path)


class QdrantGallery:
    """One Qdrant collection of gallery embeddings: search by embedding, add, remove.

    Safe to share between threads (``dva serve`` does): calls go through one lock, because
    the embedded mode is a single-threaded in-process store.
    """

    def __init__(self, config: QdrantConfig, embed_dim: int, *, create: bool = False) -> None:
        try:
            from qdrant_client import QdrantClient, models
        except ImportError:
            raise MissingDependency(
                "the qdrant backend needs the qdrant-client package: pip install 'dva[qdrant]'"
            ) from None
        self.config = config
        self.embed_dim = embed_dim
        self._models = models
        self._lock = threading.Lock()
        if config.url is not None:
            self._client = _server_client(config)
        else:
            try:
                self._client = QdrantClient(path=str(config.path))
            except RuntimeError as e:  # the folder is locked by another process
                raise DataError(
                    f"{config.path}: the embedded Qdrant database is open in another process "
                    f"(one process at a time; a server allows many): {e}"
                ) from None
        try:
            self._open_collection(create)
        except BaseException:
            self._client.close()  # an embedded folder stays locked until its client is closed
            raise

    def _open_collection(self, create: bool) -> None:
        name, address, models = self.config.collection, self.config.address, self._models
        if not self._call(lambda: self._client.collection_exists(name)):
            if not create:
                raise DataError(
                    f"{address}: no Qdrant collection {name!r} (fill it with `dva index --backend qdrant ...`)"
                )
            self._call(
                lambda: self._client.create_collection(
                    name, vectors_config=models.VectorParams(size=self.embed_dim, distance=models.Distance.COSINE)
                )
            )
        vectors = self._call(lambda: self._client.get_collection(name)).config.params.vectors
        size = getattr(vectors, "size", None)
        if size != self.embed_dim:
            raise DataError(
                f"{address}: collection {name!r} holds {size if size is not None else 'named'} vectors, "
                f"the index's model gives {self.embed_dim}-d ones (another model's collection? "
                f"choose another --collection)"
            )

    def __len__(self) -> int:
        return int(self._call(lambda: self._client.count(self.config.collection, exact=True)).count)

    def add(self, ids: Sequence[int], vectors: np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert images ``ids`` (an id already there is replaced) with their embeddings and metadata rows."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.embed_dim:
            raise DataError(f"vectors must have shape (n, {self.embed_dim}), got {vectors.shape}")
        if not len(ids) == len(vectors) == len(rows):
            raise DataError(f"add: {len(ids)} ids, {len(vectors)} vectors and {len(rows)} rows; one of each per image")
        if any(int(i) < 0 for i in ids):
            raise DataError("add: image ids are non-negative integers")
        for start in range(0, len(ids), UPSERT_BATCH):
            batch = self._models.Batch(
                ids=[int(i) for i in ids[start : start + UPSERT_BATCH]],
                vectors=vectors[start : start + UPSERT_BATCH].tolist(),
                payloads=[dict(r) for r in rows[start : start + UPSERT_BATCH]],
            )
            self._call(lambda batch=batch: self._client.upsert(self.config.collection, points=batch, wait=True))

    def ids(self) -> set[int]:
        """Every image id the collection holds (scrolled in pages, without vectors or payloads)."""
        found: set[int] = set()
        offset = None
        while True:
            points, offset = self._call(
                lambda offset=offset: self._client.scroll(
                    self.config.collection,
                    limit=UPSERT_BATCH * 4,
                    offset=offset,
                    with_payload=False,
                    with_vectors=False,
                )
            )
            found.update(int(p.id) for p in points)
            if offset is None:
                return found

    def remove(self, ids: Iterable[int]) -> None:
        """Delete images ``ids`` (ids that are not there are ignored); other ids do not change."""
        selector = self._models.PointIdsList(points=[int(i) for i in ids])
        if selector.points:
            self._call(lambda: self._client.delete(self.config.collection, points_selector=selector, wait=True))

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float, dict[str, Any]]]]:
        """``(id, cosine, metadata row)`` of the top ``k`` of each query (``(n, D)``), best first."""
        requests = [
            self._models.QueryRequest(query=q.tolist(), limit=k, with_payload=True)
            for q in np.asarray(queries, dtype=np.float32)
        ]
        if not requests:
            return []
        responses = self._call(lambda: self._client.query_batch_points(self.config.collection, requests=requests))
        return [[(int(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def get(self, image_id: int) -> dict[str, Any] | None:
        """The metadata row of ``image_id``, or None when the collection does not hold it."""
        found = self._call(
            lambda: self._client.retrieve(
                self.config.collection, ids=[int(image_id)], with_payload=True, with_vectors=False
            )
        )
        return dict(found[0].payload or {}) if found else None

    def describe(self) -> dict[str, Any]:
        """What ``GET /healthz`` and ``dva search --json`` report (the API key never appears)."""
        mode = "server" if self.config.url is not None else "embedded"
        return {
            "type": "qdrant",
            "factory": f"qdrant {mode} {self.config.address} collection {self.config.collection}",
            "address": self.config.address,
            "collection": self.config.collection,
            "mode": mode,
        }

    def close(self) -> None:
        """Release the connection (and the embedded folder's lock, so another process may open it)."""
        with self._lock:
            self._client.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call; a server that cannot be reached or refuses becomes one line naming it."""
        from qdrant_client.http.exceptions import ApiException, ResponseHandlingException, UnexpectedResponse

        address = self.config.address
        try:
            with self._lock:
                return fn()
        except ResponseHandlingException as e:  # connection refused, DNS, timeout, TLS
            source = getattr(e, "source", e)
            raise DatabaseUnavailable(
                f"{address}: cannot reach the Qdrant server ({type(source).__name__}: {source})"
            ) from None
        except UnexpectedResponse as e:
            if e.status_code in (401, 403):
                raise DatabaseUnavailable(
                    f"{address}: the Qdrant server refused the API key (HTTP {e.status_code}); "
                    f"set it in ${self.config.api_key_env}"
                ) from None
            raise DatabaseUnavailable(
                f"{address}: the Qdrant server answered HTTP {e.status_code} {e.reason_phrase} (is it a Qdrant server?)"
            ) from None
        except ApiException as e:
            raise DatabaseUnavailable(f"{address}: Qdrant request failed ({e})") from None


def check_server(config: QdrantConfig) -> None:
    """Fail now, not after hours of embedding, when a server cannot be reached or refuses the key."""
    if config.url is None:
        return  # the embedded folder is opened (and locked) only when it is filled
    gallery = QdrantGallery.__new__(QdrantGallery)
    gallery.config, gallery._lock = config, threading.Lock()
    gallery._client = _server_client(config)
    try:
        gallery._call(lambda: gallery._client.collection_exists(config.collection))
    finally:
        gallery._client.close()


def _server_client(config: QdrantConfig) -> Any:
    from qdrant_client import QdrantClient

    api_key = os.environ.get(config.api_key_env) or None
    # check_compatibility would only warn when the server is unreachable: the first call says it in one line
    return QdrantClient(url=config.url, api_key=api_key, timeout=config.timeout, check_compatibility=False)


def embedded_config(index_dir: str | Path, collection: str = DEFAULT_COLLECTION) -> QdrantConfig:
    """The embedded database kept inside an index directory (no server needed)."""
    return QdrantConfig(path=Path(index_dir) / EMBEDDED_FOLDER, collection=collection)


def push_index(
    index: GalleryIndex, gallery: QdrantGallery, *, refresh: bool = False, progress: Callable[[int], None] | None = None
) -> int:
    """Make ``gallery`` hold exactly ``index``'s images, by their stable ids.

    Points whose id the index no longer holds (removed, or re-embedded under a new id) are
    deleted; images the collection lacks are upserted with their embedding and metadata row.
    ``refresh``: upsert every image, for updates that keep an id but change its label or fields.
    Idempotent: the index directory is the source of truth, so a push after a failed one, or
    into a new collection, completes it. Returns the number of images upserted.
    """
    if index.embed_dim != gallery.embed_dim:
        raise DataError(f"{index.path}: {index.embed_dim}-d embeddings, the collection holds {gallery.embed_dim}-d")
    wanted = np.asarray(index.ids, dtype=np.int64)
    held = gallery.ids()
    gallery.remove(sorted(held - set(wanted.tolist())))
    positions = [p for p, i in enumerate(wanted.tolist()) if refresh or i not in held]
    for first in range(0, len(positions), UPSERT_BATCH):
        chunk = positions[first : first + UPSERT_BATCH]
        gallery.add(wanted[chunk].tolist(), np.asarray(index.embeddings[chunk]), [index.rows[p] for p in chunk])
        if progress is not None:
            progress(len(chunk))
    return len(positions)
