"""The HTTP layer: a thin FastAPI app over :class:`dva.Searcher` (clip-retrieval's ``clip_back``).

Endpoints (OpenAPI docs at ``/docs``, served offline):

- ``POST /search``            multipart image upload ``file``, form fields ``k``, ``filter``
                              (repeatable, ANDed: ``label=Cardinal``, ``year>=2000``, ...) and
                              re-ranking ``rerank`` (``aqe`` or ``dba``), ``rerank_k``, ``alpha``
- ``POST /search/embedding``  JSON ``{"embedding": [...], "k": 10, "filter": ["label in A,B"], "rerank": "aqe"}``
- ``GET  /images/{id}``       a gallery image, by the id the index gave it (never by path)
- ``GET  /healthz``           what the index holds, and its version
- ``GET  /``                  the search page (static HTML/JS/CSS shipped in ``static/``)

Untrusted input is bounded before it costs anything: request bodies above
``max_upload_bytes`` are refused with 413 before they are parsed, images above
``max_image_pixels`` with 413 from their header alone (decompression bombs), anything
that does not decode as an image with 415. With an API key set, every API endpoint wants
the ``X-API-Key`` header; the page, its static files and the OpenAPI docs stay open (they
hold no data), and the page sends the key the user types into it with each API call.

``dva index`` may update the index directory while it is served: an :class:`IndexReloader`
thread polls its ``manifest.json`` every ``reload_seconds`` and swaps a newly committed
version in (:meth:`dva.Searcher.refresh`); ``/healthz`` reports the version served.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, BinaryIO

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field

from dva import __version__
from dva.data.images import ImageDecodeError, ImageTooLargeError, load_image, release_memory
from dva.errors import ConfigError, DataError
from dva.index.filters import Filter, parse_filters
from dva.index.rerank import DEFAULT_ALPHA, DEFAULT_RERANK_K, RERANK_METHODS, check_rerank
from dva.index.searcher import Match, Searcher
from dva.index.vectordb import DatabaseUnavailable
from dva.serve.limits import BodySizeLimit, timed_h11

STATIC_DIR = Path(str(files("dva.serve") / "static"))
API_KEY_HEADER = "X-API-Key"
#: Where the reloader says what it did; ``dva serve`` prints it beside uvicorn's log.
log = logging.getLogger("dva.serve")
#: Room for the multipart envelope (boundaries, part headers, the ``k`` field) around the file.
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class ServeSettings:
    """Limits and access control of one server (``dva serve`` options)."""

    #: Largest accepted upload, in bytes.
    max_upload_bytes: int = 10 * 1024 * 1024
    #: Largest accepted image, in pixels (width x height), checked before decoding.
    max_image_pixels: int = 40_000_000
    max_k: int = 100
    default_k: int = 10
    #: When set, every API endpoint requires it in the ``X-API-Key`` header.
    api_key: str | None = None
    #: Uploads decoded at once. Decoding runs outside the model's lock and a worst-case image
    #: under the caps costs up to ~200 MB while it decodes: unbounded, 4 at once took 4 GB.
    decode_slots: int = 2
    #: Seconds a client may take to send its request headers, then its body (slow clients
    #: hold a connection each); connections held at once, above which uvicorn answers 503.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 100
    #: Seconds between two looks at the index's ``manifest.json`` for a version ``dva index``
    #: committed since (:class:`IndexReloader`); 0: serve the version loaded at start forever.
    reload_seconds: float = 2.0


class MatchOut(BaseModel):
    id: int = Field(description="Image id in the index; GET /images/{id} serves the image.")
    rank: int
    label: str | None
    score: float = Field(description="Cosine similarity to the query, in [-1, 1].")
    name: str = Field(description="File name of the gallery image (full paths are not exposed).")
    image_url: str
    metadata: dict[str, Any] = Field(description="Extra fields the gallery list gave this image.")
    is_match: bool | None = Field(
        None,
        description="Same item as the query: score >= the index's `dva calibrate` threshold; null when uncalibrated.",
    )


class SearchResponse(BaseModel):
    results: list[MatchOut]
    k: int
    gallery_size: int
    took_ms: float


#: Filters one request may send (each is one indexed SQL lookup, or one Qdrant condition).
MAX_FILTERS = 16
FILTER_HELP = (
    "Keep only matching images; repeat for AND: label=Cardinal, label in A,B, year>=2000, price<10, "
    "10<=year<=20 (fields: label, path, or a field of the gallery list)."
)

RERANK_HELP = (
    f"Re-rank the matches ({' or '.join(RERANK_METHODS)}: query expansion or database-side augmentation); "
    "empty or absent: plain cosine order. Not with a vector database backend."
)
RERANK_K_HELP = "With rerank: neighbours per expansion."
ALPHA_HELP = "With rerank: weight exponent, weights = similarity^alpha."


class EmbeddingQuery(BaseModel):
    embedding: list[float] = Field(min_length=1, description="A query embedding (normalised by the server).")
    k: int = Field(10, ge=1, strict=True)  # strict: JSON true is not 1
    filter: list[str] = Field(default_factory=list, max_length=MAX_FILTERS, description=FILTER_HELP)
    rerank: str | None = Field(None, description=RERANK_HELP)
    rerank_k: int = Field(DEFAULT_RERANK_K, strict=True, description=RERANK_K_HELP)
    alpha: float = Field(DEFAULT_ALPHA, description=ALPHA_HELP)


class Health(BaseModel):
    status: str
    images: int
    embed_dim: int
    backbone: str
    method: str
    img_size: int
    index: str
    version: int


class IndexReloader:
    """A background thread that keeps a served :class:`Searcher` on the index's latest version.

    Polling, rather than a check inside requests: loading a version (its shards, its FAISS
    index) takes from milliseconds to seconds with the gallery's size, and here no request
    waits for it; a request never touches the file system for it; and an idle server is
    current too, so ``/healthz`` shows the swap without a search first. A poll costs one read
    of ``manifest.json`` (a few KB). A failed reload (a manifest edited by hand, a file an
    update removed mid-load) is logged once per distinct error and the version in use goes on
    serving; the next poll tries again.
    """

    def __init__(self, searcher: Searcher, seconds: float) -> None:
        self.searcher = searcher
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    def check(self) -> bool:
        """One poll: True when a new version was swapped in; never raises."""
        before = self.searcher.index.version
        try:
            swapped = self.searcher.refresh()
        except Exception as e:  # noqa: BLE001 - whatever failed, the server keeps serving
            message = f"{type(e).__name__}: {e}" if not isinstance(e, DataError) else str(e)
            if message != self._last_error:
                log.warning("index reload failed, still serving version %d: %s", before, message)
            self._last_error = message
            return False
        self._last_error = None
        if swapped:
            log.info("index version %d -> %d (%d images)", before, self.searcher.index.version, len(self.searcher))
        return swapped

    def start(self) -> None:
        if self.seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dva-index-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            self.check()


def create_app(searcher: Searcher, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``searcher``; ``uvicorn.run(create_app(...))`` or ``dva serve`` runs it
    (with :func:`server_config`, which adds the connection limits). While it runs, an
    :class:`IndexReloader` (``app.state.reloader``) follows updates of the index."""
    settings = settings or ServeSettings()
    if settings.api_key == "":
        raise ConfigError("the API key is empty, which would turn authentication off: set a key or none")
    if not settings.reload_seconds >= 0:  # also NaN
        raise ConfigError(f"reload_seconds must be 0 (off) or more, got {settings.reload_seconds}")
    reloader = IndexReloader(searcher, settings.reload_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reloader.start()  # with the server, not the app object: a test's app without a server polls nothing
        try:
            yield
        finally:
            reloader.stop()

    app = FastAPIOffline(
        title="dva gallery search",
        version=__version__,
        description="Find the gallery images most similar to a photo (fine-grained retrieval with dva).",
        lifespan=lifespan,
    )
    app.state.reloader = reloader
    app.state.searcher = searcher
    app.state.settings = settings
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD, timeout=settings.body_timeout
    )
    decode_slots = threading.BoundedSemaphore(max(1, settings.decode_slots))
    api = APIRouter(dependencies=[Depends(_api_key_check(settings.api_key))] if settings.api_key else [])

    @api.get("/healthz", response_model=Health, summary="What the index holds")
    def healthz() -> Health:
        info = searcher.describe()
        return Health(
            status="ok",
            images=info["images"],
            embed_dim=info["embed_dim"],
            backbone=info["model"]["backbone"],
            method=info["model"]["method"],
            img_size=info["model"]["img_size"],
            index=info["index"]["factory"],
            version=info["version"],
        )

    @api.post("/search", response_model=SearchResponse, summary="Search with an uploaded image")
    def search_image(
        file: UploadFile = File(..., description="The query image (JPEG, PNG, WebP, ...)."),
        k: int = Form(settings.default_k, ge=1, description=f"Number of matches (at most {settings.max_k})."),
        filter: list[str] = Form([], description=FILTER_HELP),  # noqa: A002 - the API's word for it
        rerank: str | None = Form(None, description=RERANK_HELP),
        rerank_k: int = Form(DEFAULT_RERANK_K, description=RERANK_K_HELP),
        alpha: float = Form(DEFAULT_ALPHA, description=ALPHA_HELP),
    ) -> SearchResponse:
        _check_k(k, settings)
        filters = _parse_filters(filter, searcher)  # before the upload is decoded: a typo costs nothing
        method = _check_rerank(rerank, rerank_k, alpha, searcher)
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {settings.max_upload_bytes:,} bytes")
        name = file.filename or "upload"
        with decode_slots:
            try:
                image = load_image(io.BytesIO(data), max_pixels=settings.max_image_pixels, name=name, shrink=True)
            except ImageTooLargeError as e:
                raise HTTPException(413, str(e)) from None
            except ImageDecodeError as e:
                raise HTTPException(415, f"{name}: not an image that can be decoded") from e
            finally:
                del data
                release_memory()  # the full-size decode is gone: give its pages back
        start = time.perf_counter()
        matches = searcher.search(image, k, filter=filters, rerank=method, rerank_k=rerank_k, alpha=alpha)
        return _response(matches, k, len(searcher), start)

    @api.post("/search/embedding", response_model=SearchResponse, summary="Search with an embedding")
    def search_embedding(query: EmbeddingQuery) -> SearchResponse:
        _check_k(query.k, settings)
        filters = _parse_filters(query.filter, searcher)
        method = _check_rerank(query.rerank, query.rerank_k, query.alpha, searcher)
        start = time.perf_counter()
        try:
            matches = searcher.search_embedding(
                query.embedding, query.k, filter=filters, rerank=method, rerank_k=query.rerank_k, alpha=query.alpha
            )
        except DatabaseUnavailable:
            raise  # answered 503 below: not the query's fault
        except DataError as e:
            raise HTTPException(422, str(e)) from None
        return _response(matches, query.k, len(searcher), start)

    @api.get("/images/{image_id}", summary="A gallery image, by id", response_class=StreamingResponse)
    def gallery_image(image_id: int = PathParam(..., ge=0)) -> StreamingResponse:
        try:  # one look-up: the index may be swapped for a newer version between two
            match = searcher.match(image_id)  # not `id < len(searcher)`: ids have gaps after removals
        except KeyError:
            raise HTTPException(404, f"no image {image_id} in the index") from None
        opened = open_gallery_file(Path(match.path), searcher.index.folders)
        if opened is None:
            raise HTTPException(
                404, f"image {image_id} is indexed but its file is gone or is no longer a gallery image"
            )
        f, media_type, size = opened
        return StreamingResponse(_chunks(f), media_type=media_type, headers={"content-length": str(size)})

    app.include_router(api)

    @app.exception_handler(DatabaseUnavailable)
    def database_unavailable(request: Any, error: DatabaseUnavailable) -> JSONResponse:
        # The address stays in the server's log: clients need not learn the internal network.
        print(f"error: {error}", file=sys.stderr, flush=True)
        return JSONResponse({"detail": "the vector database is unavailable; try again later"}, status_code=503)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def server_config(app: FastAPI, settings: ServeSettings, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for ``app``: header timeout, keep-alive and connection limits."""
    return uvicorn.Config(
        app,
        http=timed_h11(settings.header_timeout),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        **options,
    )


def open_gallery_file(path: Path, gallery_dirs: frozenset[str]) -> tuple[BinaryIO, str, int] | None:
    """``(open file, media type, size)`` of a registered gallery file, or None when it must not be served.

    The index records paths; what a path points to can change after indexing (a symlink
    swapped to a secret, a file replaced by text). Served is only a regular file that
    resolves into a folder the index holds images of and that still opens as an image; its
    media type comes from its content, and the file checked is the file sent (one open).
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not any(str(folder) in gallery_dirs for folder in real.parents):
        return None
    try:
        f = open(real, "rb")
    except OSError:
        return None
    try:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        with Image.open(f) as image:
            media_type = Image.MIME.get(image.format or "")
        if media_type is None:
            raise OSError("no media type")
        f.seek(0)
        return f, media_type, info.st_size
    except Exception:  # noqa: BLE001 - whatever it is, it is not an image to serve
        f.close()
        return None


def _chunks(f: BinaryIO, size: int = 256 * 1024) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk


def _api_key_check(expected: str):
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when the server has a key.")

    def require_key(key: str | None = Security(header)) -> None:
        # compare_digest: the time taken does not reveal how much of a guess was right. Header
        # values arrive as Latin-1 text: back to their bytes, to compare with the key's UTF-8.
        if key is None or not secrets.compare_digest(key.encode("latin-1", "replace"), expected.encode()):
            raise HTTPException(
                401, f"missing or wrong API key ({API_KEY_HEADER} header)", headers={"WWW-Authenticate": API_KEY_HEADER}
            )

    return require_key


def _parse_filters(texts: list[str], searcher: Searcher) -> list[Filter]:
    """Filters parsed and their fields checked, or 422 naming the bad one."""
    if len(texts) > MAX_FILTERS:
        raise HTTPException(422, f"at most {MAX_FILTERS} filters, got {len(texts)}")
    try:
        filters = parse_filters([t for t in texts if t.strip()])
        # an unknown field is an error, not an empty answer, in whichever database is searched
        if searcher.backend is not None:
            searcher.backend.check_filters(filters)
        else:
            searcher.index.db.check_fields(filters)
    except DatabaseUnavailable:
        raise  # answered 503: not the query's fault
    except DataError as e:
        raise HTTPException(422, str(e)) from None
    return filters


def _check_rerank(method: str | None, n: int, alpha: float, searcher: Searcher) -> str | None:
    """The re-ranking method (None for an empty or ``none`` one), or 422 naming the bad field."""
    if method is not None and method.strip().lower() in ("", "none"):
        method = None
    try:
        check_rerank(method, n, alpha)
    except ConfigError as e:
        raise HTTPException(422, str(e)) from None
    if method is not None and searcher.backend is not None:
        raise HTTPException(422, "rerank: re-ranking needs the index's own embeddings, not a vector database backend")
    return method


def _check_k(k: int, settings: ServeSettings) -> None:
    if k > settings.max_k:
        raise HTTPException(422, f"k={k} is above this server's limit of {settings.max_k}")


def _response(matches: list[Match], k: int, gallery_size: int, start: float) -> SearchResponse:
    results = [
        MatchOut(
            id=m.id,
            rank=rank,
            label=m.label,
            score=m.score,
            name=Path(m.path).name,
            image_url=f"/images/{m.id}",
            metadata=m.metadata,
            is_match=m.is_match,
        )
        for rank, m in enumerate(matches, start=1)
    ]
    return SearchResponse(results=results, k=k, gallery_size=gallery_size, took_ms=(time.perf_counter() - start) * 1000)
