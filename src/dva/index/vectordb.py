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
rebuilds a lost or partial collection. The collection's metadata records the index version it
mirrors (:data:`SYNC_KEY`), so a push after an update sends only what the update changed.
Searches return the payload with each hit, so a serving machine needs the model, not the
gallery's embeddings.

Filters (``dva search --filter``) keep exactly the images the index's own database keeps:
:meth:`QdrantGallery.add` writes, beside the payload users get back, one object per value of
each extra field (``_dva_fields``: ``{name, text, num}``, the rows of the index's ``fields``
table, made by the same :func:`~dva.index.filters.field_values`), and a filter becomes one
Qdrant filter on them, applied inside the search (the top k among the kept images, not a
post-filter). These derived keys never come back from :meth:`QdrantGallery.search` or
:meth:`QdrantGallery.get`.

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
from dva.index.filters import BUILTIN_FIELDS, Filter, check_fields, field_values, maybe_number
from dva.index.store import diffable_since, index_identity

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
#: Payload key of the values filters match: one ``{name, text, num}`` object per value of each
#: extra field (``num`` only when the value reads as a number), like the ``fields`` table's rows.
#: An array of objects, not one key per field, so that any field name works (Qdrant key paths
#: give dots and brackets a meaning) and a fixed set of payload indexes covers every field.
FIELDS_KEY = "_dva_fields"
#: Payload key that marks a point written with :data:`FIELDS_KEY`: points without it were
#: pushed before filters existed, and a filter would silently miss them.
FORMAT_KEY = "_dva_format"
FILTER_FORMAT = 1
#: What :meth:`QdrantGallery.add` adds to a metadata row, and search and get strip again.
DERIVED_KEYS = (FIELDS_KEY, FORMAT_KEY)
#: Key of the collection's metadata that says which index version the points mirror:
#: ``{"index": manifest["uuid"], "version": v}`` (:func:`push_index`). Collection metadata,
#: not a point: it never shows in search, count, get or scroll.
SYNC_KEY = "dva_sync"
#: Field names listed by the error for an unknown field, at most.
FIELD_NAMES_SHOWN = 1000
T = TypeVar("T")


class VectorBackend(Protocol):
    """What :class:`dva.Searcher` needs from a vector database (:class:`QdrantGallery` is one)."""

    embed_dim: int

    def __len__(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, filters: Sequence[Filter] = ()
    ) -> list[list[tuple[int, float, dict[str, Any]]]]: ...

    def check_filters(self, filters: Sequence[Filter]) -> None: ...

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
        #: Payload indexes serve filters on a server; the embedded mode has none (the client warns).
        self._payload_indexes = config.url is not None
        #: Set once :meth:`add` has created the payload indexes (idempotent, so once per process).
        self._indexed = False
        #: Set once the collection was seen to hold no point without the filter keys.
        self._filterable = False
        #: Whether the collection may carry a sync marker that :meth:`add` or :meth:`remove`
        #: would make false (cleared by the first of them, set again by :meth:`mark_synced`).
        self._maybe_marked = True
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
        """Upsert images ``ids`` (an id already there is replaced) with their embeddings and metadata rows.

        The collection then no longer equals an index version: its sync marker is dropped, so
        the next :func:`push_index` compares every id instead of trusting the marker.
        """
        self._unmark()
        self._upsert(ids, vectors, rows)

    def _upsert(self, ids: Sequence[int], vectors: np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
        """:meth:`add` without touching the sync marker (:func:`push_index` writes it itself)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.embed_dim:
            raise DataError(f"vectors must have shape (n, {self.embed_dim}), got {vectors.shape}")
        if not len(ids) == len(vectors) == len(rows):
            raise DataError(f"add: {len(ids)} ids, {len(vectors)} vectors and {len(rows)} rows; one of each per image")
        if any(int(i) < 0 for i in ids):
            raise DataError("add: image ids are non-negative integers")
        self._index_filter_keys()
        for start in range(0, len(ids), UPSERT_BATCH):
            batch = self._models.Batch(
                ids=[int(i) for i in ids[start : start + UPSERT_BATCH]],
                vectors=vectors[start : start + UPSERT_BATCH].tolist(),
                payloads=[filter_payload(r) for r in rows[start : start + UPSERT_BATCH]],
            )
            self._call(lambda batch=batch: self._client.upsert(self.config.collection, points=batch, wait=True))

    def _index_filter_keys(self) -> None:
        """Payload indexes of the keys filters read: a filter is then an index lookup, and
        Qdrant's planner can search a small kept set exactly instead of through the graph.

        A fixed set whatever the fields are (:data:`FIELDS_KEY` is one array for all of them).
        ``path`` is indexed too, as the index's own database does: one keyword per image.
        """
        if self._indexed or not self._payload_indexes:
            return
        schema = self._models.PayloadSchemaType
        keys = {
            "label": schema.KEYWORD,
            "path": schema.KEYWORD,
            f"{FIELDS_KEY}[].name": schema.KEYWORD,
            f"{FIELDS_KEY}[].text": schema.KEYWORD,
            f"{FIELDS_KEY}[].num": schema.FLOAT,
            FORMAT_KEY: schema.INTEGER,
        }
        for key, kind in keys.items():
            self._call(
                lambda key=key, kind=kind: self._client.create_payload_index(
                    self.config.collection, key, field_schema=kind, wait=True
                )
            )
        self._indexed = True

    def ids(self) -> set[int]:
        """Every image id the collection holds (scrolled in pages, without vectors or payloads)."""
        return self._scroll_ids(None)

    def unfilterable_ids(self) -> set[int]:
        """Ids of the points written before filters existed (no :data:`FORMAT_KEY`): push_index rewrites them."""
        return self._scroll_ids(self._old_points())

    def _old_points(self) -> Any:
        models = self._models
        return models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=FORMAT_KEY))])

    def _scroll_ids(self, scroll_filter: Any) -> set[int]:
        found: set[int] = set()
        offset = None
        while True:
            points, offset = self._call(
                lambda offset=offset: self._client.scroll(
                    self.config.collection,
                    scroll_filter=scroll_filter,
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
        """Delete images ``ids`` (ids that are not there are ignored); other ids do not change.

        Drops the sync marker, as :meth:`add` does: the next push puts back what the index holds.
        """
        self._unmark()
        self._delete(ids)

    def _delete(self, ids: Iterable[int]) -> None:
        """:meth:`remove` without touching the sync marker."""
        selector = self._models.PointIdsList(points=[int(i) for i in ids])
        if selector.points:
            self._call(lambda: self._client.delete(self.config.collection, points_selector=selector, wait=True))

    def search(
        self, queries: np.ndarray, k: int, filters: Sequence[Filter] = ()
    ) -> list[list[tuple[int, float, dict[str, Any]]]]:
        """``(id, cosine, metadata row)`` of the top ``k`` of each query (``(n, D)``), best first.

        ``filters`` (ANDed) go with each request, so Qdrant returns the top ``k`` among the images
        they keep, as the index's own search does, not a filtered top ``k`` of all images.
        """
        self.check_filters(filters)
        query_filter = qdrant_filter(filters, self._models) if filters else None
        requests = [
            self._models.QueryRequest(query=q.tolist(), limit=k, filter=query_filter, with_payload=self._user_payload())
            for q in np.asarray(queries, dtype=np.float32)
        ]
        if not requests:
            return []
        responses = self._call(lambda: self._client.query_batch_points(self.config.collection, requests=requests))
        return [[(int(p.id), float(p.score), _user_row(p.payload)) for p in r.points] for r in responses]

    def check_filters(self, filters: Sequence[Filter]) -> None:
        """Refuse what the index's own database refuses (an unknown field, a range on ``label``
        or ``path``), and a collection pushed before filters existed: its points lack the keys
        filters read, so a filter would keep none of them without a word."""
        if not filters:
            return
        self._check_filterable()
        name = self.config.collection
        check_fields(filters, self._has_field, self._field_names, where=f"Qdrant collection {name!r}")

    def sync_marker(self) -> dict[str, Any] | None:
        """``{"index": uuid, "version": v}``: the index version the points equal, as the last
        complete :func:`push_index` recorded it; None when no push recorded one (or it was dropped)."""
        info = self._call(lambda: self._client.get_collection(self.config.collection))
        marker = (info.config.metadata or {}).get(SYNC_KEY)
        if not isinstance(marker, dict) or not isinstance(marker.get("index"), str):
            return None
        if not isinstance(marker.get("version"), int):
            return None
        return marker

    def mark_synced(self, index_id: str, version: int) -> None:
        """Record that the points now equal version ``version`` of index ``index_id``."""
        self._set_marker({"index": index_id, "version": int(version)})
        self._maybe_marked = True

    def drop_marker(self) -> None:
        """Forget which version the points equal (a null removes a metadata key)."""
        self._set_marker(None)
        self._maybe_marked = False

    def _set_marker(self, marker: dict[str, Any] | None) -> None:
        name = self.config.collection
        self._call(lambda: self._client.update_collection(name, metadata={SYNC_KEY: marker}))

    def _unmark(self) -> None:
        """Drop the marker before the first change made outside :func:`push_index` (once: one
        request per gallery object, not per call)."""
        if self._maybe_marked:
            self.drop_marker()

    def _check_filterable(self) -> None:
        """One point without :data:`FORMAT_KEY` is enough to refuse; checked until it passes once
        (a push only ever adds the key: :func:`push_index` rewrites the points without it)."""
        if self._filterable:
            return
        old, _ = self._call(
            lambda: self._client.scroll(
                self.config.collection, scroll_filter=self._old_points(), limit=1, with_payload=False
            )
        )
        if old:
            raise DataError(
                f"{self.config.address}: Qdrant collection {self.config.collection!r} was pushed before "
                f"filters were supported (image {old[0].id} has no filter keys); push it again to filter it: "
                f"{self._push_command()}"
            )
        self._filterable = True

    def _push_command(self) -> str:
        """The command that rewrites this collection's points: ``dva index`` again on the same
        gallery (the index is unchanged, so nothing is embedded; the push rewrites old points)."""
        if self.config.url is not None:
            where = f"INDEX_DIR --backend qdrant --qdrant-url {self.config.url}"
        elif self.config.path is not None and self.config.path.name == EMBEDDED_FOLDER:
            where = f"{self.config.path.parent} --backend qdrant"
        else:
            return "push_index(GalleryIndex.load(INDEX_DIR), gallery)"
        collection = "" if self.config.collection == DEFAULT_COLLECTION else f" --collection {self.config.collection}"
        return f"dva index --images GALLERY --out {where}{collection} (GALLERY: the folder or list it was built from)"

    def _has_field(self, name: str) -> bool:
        models = self._models
        named = models.Filter(must=[_nested(models, models.Filter(must=[_is_field(models, name)]))])
        points, _ = self._call(
            lambda: self._client.scroll(self.config.collection, scroll_filter=named, limit=1, with_payload=False)
        )
        return bool(points)

    def _field_names(self) -> list[str]:
        """The extra fields the collection's images have (for the error that names an unknown one)."""
        facet = self._call(
            lambda: self._client.facet(self.config.collection, f"{FIELDS_KEY}[].name", limit=FIELD_NAMES_SHOWN)
        )
        return sorted(str(hit.value) for hit in facet.hits)

    def _user_payload(self) -> Any:
        """The payload without the derived keys: less to send, and results look as before filters."""
        return self._models.PayloadSelectorExclude(exclude=list(DERIVED_KEYS))

    def get(self, image_id: int) -> dict[str, Any] | None:
        """The metadata row of ``image_id``, or None when the collection does not hold it."""
        found = self._call(
            lambda: self._client.retrieve(
                self.config.collection, ids=[int(image_id)], with_payload=self._user_payload(), with_vectors=False
            )
        )
        return _user_row(found[0].payload) if found else None

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


def filter_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The payload of one image: its metadata row, plus the keys filters read.

    :data:`FIELDS_KEY` holds ``(text, number)`` pairs of each extra field from
    :func:`~dva.index.filters.field_values`, the function that fills the index's own ``fields``
    table: Qdrant then keeps exactly the images SQLite keeps (a range needs a number in the
    payload, a keyword match compares exact text, so the raw value would not do).
    """
    reserved = [key for key in DERIVED_KEYS if key in row]
    if reserved:
        raise DataError(f"metadata field {reserved[0]!r}: the name is reserved for the Qdrant backend's filters")
    values = [
        {"name": name, "text": text, **({} if number is None else {"num": number})}
        for name, value in row.items()
        if name not in BUILTIN_FIELDS
        for text, number in field_values(value)
    ]
    return {**row, FIELDS_KEY: values, FORMAT_KEY: FILTER_FORMAT}


def qdrant_filter(filters: Sequence[Filter], models: Any) -> Any:
    """One Qdrant filter keeping what :func:`~dva.index.filters.filter_sql` keeps for every filter (AND)."""
    return models.Filter(must=[_condition(f, models) for f in filters])


def _condition(f: Filter, models: Any) -> Any:
    """``label``/``path``: the payload's own text. An extra field: one of its
    :data:`FIELDS_KEY` objects (the same one for name and value, hence nested) has the name and
    the text, or a number equal to the value read as one, or a number in the range."""
    if f.field in BUILTIN_FIELDS:
        return models.FieldCondition(key=f.field, match=models.MatchAny(any=list(f.values)))
    if f.values:
        numbers = [n for n in (maybe_number(v) for v in f.values) if n is not None]
        text = models.FieldCondition(key="text", match=models.MatchAny(any=list(f.values)))
        equal = [models.FieldCondition(key="num", range=models.Range(gte=n, lte=n)) for n in numbers]
        return _nested(models, models.Filter(must=[_is_field(models, f.field)], should=[text, *equal]))
    bounds = models.Range(
        gte=f.low if f.low_inclusive else None,
        gt=None if f.low_inclusive else f.low,
        lte=f.high if f.high_inclusive else None,
        lt=None if f.high_inclusive else f.high,
    )
    return _nested(
        models, models.Filter(must=[_is_field(models, f.field), models.FieldCondition(key="num", range=bounds)])
    )


def _is_field(models: Any, name: str) -> Any:
    return models.FieldCondition(key="name", match=models.MatchValue(value=name))


def _nested(models: Any, inner: Any) -> Any:
    """A condition that one element of :data:`FIELDS_KEY` meets as a whole."""
    return models.NestedCondition(nested=models.Nested(key=FIELDS_KEY, filter=inner))


def _user_row(payload: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata row as pushed, whatever the server sent back."""
    return {key: value for key, value in (payload or {}).items() if key not in DERIVED_KEYS}


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


@dataclass(frozen=True)
class PushReport:
    """What :func:`push_index` did."""

    #: Images written (embedding and metadata row).
    upserted: int
    #: Points deleted: images the index no longer holds.
    deleted: int
    #: True when only the changes since the collection's recorded version were sent; False for
    #: a comparison of every id (no usable marker, ``refresh``, or a count that did not match).
    incremental: bool


def push_index(
    index: GalleryIndex, gallery: QdrantGallery, *, refresh: bool = False, progress: Callable[[int], None] | None = None
) -> PushReport:
    """Make ``gallery`` hold exactly ``index``'s images, by their stable ids, with their current
    embeddings and metadata rows.

    The collection's sync marker (:data:`SYNC_KEY`, in its metadata) names the index
    (``manifest["uuid"]``) and a version P: the points are that version's, plus perhaps part of
    the changes after it (a push that died). The rows added after P (new, re-embedded and
    relabelled images) and the ids retired after P are what must change.

    **Incremental** when P is this index's and its SQLite still holds the rows retired since
    (P >= v - 1, :func:`~dva.index.store.diffable_since`: a push after each update): those
    rows are upserted and those ids deleted, without reading the collection's ids, so a push
    costs what the update changed. The collection's count must then equal the index's, else
    the full comparison below runs too (points changed by hand, a copy of the index directory).

    **Full** otherwise: every point id is scrolled, ids the index lacks are deleted, and images
    the collection lacks are upserted, as are points pushed before filters existed (they lack
    the keys filters read) and the rows added after P (all of them for another index's
    collection, a P newer than the index, or ``refresh``; none without a marker, as before
    markers existed: use ``refresh`` once after changing points by hand).

    The marker is written last, once the points are right; a push that dies midway leaves a
    marker that still holds (or one naming this index at "version -1": rewrite every row), so
    the next push redoes the work. Idempotent: the index directory is the source of truth.
    """
    if index.embed_dim != gallery.embed_dim:
        raise DataError(f"{index.path}: {index.embed_dim}-d embeddings, the collection holds {gallery.embed_dim}-d")
    identity = index_identity(index.manifest) if index.format_version >= 2 else None
    marker = gallery.sync_marker()
    since = _mirrored_since(marker, identity, index.version)
    if refresh or (marker is not None and since is None):  # nothing the points hold can be trusted
        since = -1
        _mark_or_drop(gallery, identity, -1, marker)  # a push that dies now must not trust the old marker
    upserted = deleted = 0
    if since is not None and since >= max(0, diffable_since(index.version)):
        upserted, deleted = _push_changes(index, gallery, since, progress)
        if len(gallery) == len(index):
            if since != index.version:
                gallery.mark_synced(str(identity), index.version)
            return PushReport(upserted, deleted, incremental=True)
    full_upserted, full_deleted = _push_all(index, gallery, since, progress)
    if identity is not None:
        gallery.mark_synced(identity, index.version)
    return PushReport(upserted + full_upserted, deleted + full_deleted, incremental=False)


def _mirrored_since(marker: dict[str, Any] | None, identity: str | None, version: int) -> int | None:
    """The version P the marker says the points are (changes after it maybe in part), when it
    can be trusted: this index's, and not newer than the index (a restored older copy)."""
    if marker is None or identity is None or marker["index"] != identity:
        return None
    since = int(marker["version"])
    return since if -1 <= since <= version else None


def _mark_or_drop(gallery: QdrantGallery, identity: str | None, version: int, marker: dict[str, Any] | None) -> None:
    if identity is not None:
        gallery.mark_synced(identity, version)
    elif marker is not None:
        gallery.drop_marker()


def _push_changes(
    index: GalleryIndex, gallery: QdrantGallery, since: int, progress: Callable[[int], None] | None
) -> tuple[int, int]:
    """Delete the ids retired since version ``since``, upsert the rows added since: ``(upserted, deleted)``."""
    written, gone = index.db.added_since(since, index.version), index.db.gone_since(since, index.version)
    gallery._delete(gone)
    _upsert_positions(index, gallery, [index.position(i) for i in written], progress)
    return len(written), len(gone)


def _push_all(
    index: GalleryIndex, gallery: QdrantGallery, since: int | None, progress: Callable[[int], None] | None
) -> tuple[int, int]:
    """Compare every id of the collection with the index's, and upsert the rows added after
    ``since`` (visible rows are never purged, so these are known whatever the history):
    ``(upserted, deleted)``."""
    wanted = index.ids.tolist()
    held = gallery.ids()
    stale = sorted(held - set(wanted))
    gallery._delete(stale)
    held -= gallery.unfilterable_ids()
    if since is not None:
        held -= set(index.db.added_since(since, index.version))
    positions = [p for p, i in enumerate(wanted) if i not in held]
    _upsert_positions(index, gallery, positions, progress)
    return len(positions), len(stale)


def _upsert_positions(
    index: GalleryIndex, gallery: QdrantGallery, positions: Sequence[int], progress: Callable[[int], None] | None
) -> None:
    """Upsert the images at ``positions`` of ``index``, a batch at a time (the embeddings may be memory-mapped)."""
    ids = np.asarray(index.ids, dtype=np.int64)
    for first in range(0, len(positions), UPSERT_BATCH):
        chunk = list(positions[first : first + UPSERT_BATCH])
        gallery._upsert(ids[chunk].tolist(), np.asarray(index.embeddings[chunk]), [index.rows[p] for p in chunk])
        if progress is not None:
            progress(len(chunk))
