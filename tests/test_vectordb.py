"""The Qdrant backend with the real database: Qdrant's embedded local mode (a folder on disk),
real loopback servers for the failure cases (a closed port, a server that refuses the key)."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import warnings

import httpx
import numpy as np
import pytest
from conftest import TINY_BACKBONE, TINY_FROZEN, TINY_IMG, class_image, run_cli, serve_in_thread, write_gallery

pytest.importorskip("qdrant_client", reason="qdrant-client is not installed (pip install 'dva[qdrant]')")

from dva.errors import ConfigError, DataError, MissingDependency  # noqa: E402 - after pytest.importorskip("qdrant_client")
from dva.index import GalleryIndex, Searcher  # noqa: E402 - after pytest.importorskip("qdrant_client")
from dva.index.filters import Filter  # noqa: E402 - after pytest.importorskip("qdrant_client")
from dva.index.vectordb import (  # noqa: E402 - after pytest.importorskip("qdrant_client")
    DERIVED_KEYS,
    PushReport,
    QdrantConfig,
    QdrantGallery,
    check_server,
    push_index,
)


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def closed_port_url() -> str:
    """A loopback address nothing listens on (the port was bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def embedded(tmp_path):
    gallery = QdrantGallery(QdrantConfig(path=tmp_path / "qdrant", collection="test"), 16, create=True)
    yield gallery
    gallery.close()


@pytest.fixture
def pushed(gallery_index, tmp_path):
    """The session's gallery index pushed into an embedded collection (outside the read-only index)."""
    gallery, index_dir = gallery_index
    vectors = QdrantGallery(QdrantConfig(path=tmp_path / "qdrant"), GalleryIndex.load(index_dir).embed_dim, create=True)
    assert push_index(GalleryIndex.load(index_dir), vectors).upserted == len(gallery.paths)
    yield gallery, index_dir, vectors
    vectors.close()


def write_fields_list(root) -> list[dict]:
    """A JSONL gallery of 12 images whose fields exercise every kind of filter: a label, a year
    given as text ("1995"), a list of tags, a price that is a number, numeric text or neither."""
    gallery = write_gallery(root / "photos", num_classes=3, per_class=4)
    rows = [
        {
            "path": str(path),
            "label": path.parent.name,
            "year": str(1995 + 3 * i),
            "tags": [["red", "round"], ["green"], ["red"], []][i % 4],
            "price": [9.5, "12", "n/a", 3][i % 4],
        }
        for i, path in enumerate(gallery.paths)
    ]
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def fields_index(tmp_path_factory):
    """An index of :func:`write_fields_list`'s gallery, pushed into an embedded collection."""
    from dva.index import IndexModel, index_gallery, read_gallery

    root = tmp_path_factory.mktemp("fields")
    rows = write_fields_list(root)
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    index_gallery(root / "index", read_gallery(root / "list.jsonl"), model=model, num_workers=0, progress=False)
    index = GalleryIndex.load(root / "index")
    vectors = QdrantGallery(QdrantConfig(path=root / "qdrant"), index.embed_dim, create=True)
    push_index(index, vectors)
    yield root / "index", vectors, rows
    vectors.close()


#: Each kind of filter, and each boundary where text and number semantics differ.
FILTER_CASES = [
    ["label=class_1"],
    ["label in class_0,class_2"],
    ["year=2004"],  # text equal to the value
    ["year=2004.0"],  # the number equal: "2004" reads as 2004
    ["year in 1998,2013,1999"],
    ["year>=2004"],
    ["year>2004"],  # exclusive: 2004 itself is out
    ["1998<=year<2013"],
    ["1998<year<=2013"],
    ["tags=red"],  # one element of a list
    ["tags in green,round"],
    ["price<10"],  # 9.5 and 3; "n/a" takes part in no range
    ["price=12"],  # the text "12"
    ["price=12.0"],  # "12" read as a number
    ["price>=3", "tags=red", "label in class_0,class_1"],  # AND
    ["year<2010", "price=n/a"],
]


def test_qdrant_filters_keep_exactly_what_the_index_keeps(fields_index):
    index_dir, vectors, rows = fields_index
    local, remote = Searcher(index_dir), Searcher(index_dir, backend=vectors)
    index = local.index
    queries = np.asarray(index.embeddings[[0, 5, 10]]) + 0.01
    cases = [*FILTER_CASES, [f"path={rows[6]['path']}"]]
    unfiltered = [[m.id for m in ms] for ms in local.search_embeddings(queries, 3)]
    beyond_unfiltered_top = False
    for filters in cases:
        for k in (3, 20):  # the top 3 among the kept images, and every kept image
            want = local.search_embeddings(queries, k, filter=filters)
            got = remote.search_embeddings(queries, k, filter=filters)
            assert all(want), filters  # every case keeps some image: the comparison says something
            for a, b, top in zip(want, got, unfiltered, strict=True):
                assert [m.id for m in b] == [m.id for m in a], (filters, k)
                assert [(m.path, m.label, m.metadata) for m in b] == [(m.path, m.label, m.metadata) for m in a]
                np.testing.assert_allclose([m.score for m in b], [m.score for m in a], atol=1e-5)
                beyond_unfiltered_top |= k == 3 and bool(set(m.id for m in b) - set(top))
    # some filtered top 3 holds images outside the unfiltered top 3: not a post-filter of it
    assert beyond_unfiltered_top


def test_the_filter_keys_never_come_back(fields_index):
    index_dir, vectors, rows = fields_index
    index = GalleryIndex.load(index_dir)
    hits = vectors.search(np.asarray(index.embeddings[:2]), 12)
    hits += vectors.search(np.asarray(index.embeddings[:2]), 12, [Filter.parse("price>=0")])
    payloads = [row for query in hits for _, _, row in query]
    assert payloads and all(not set(DERIVED_KEYS) & set(row) for row in payloads)
    assert all(row == index.rows[index.position(i)] for query in hits for i, _, row in query)
    for i in index.ids.tolist():
        assert vectors.get(i) == index.rows[index.position(i)]
    # ...though they are stored: a raw read of a point shows them
    raw = vectors._client.retrieve(vectors.config.collection, ids=[0], with_payload=True)[0].payload
    assert set(DERIVED_KEYS) <= set(raw)


def test_unknown_fields_and_text_ranges_are_refused_as_by_the_index(fields_index):
    index_dir, vectors, _ = fields_index
    local, remote = Searcher(index_dir), Searcher(index_dir, backend=vectors)
    query = np.asarray(local.index.embeddings[0])
    for text in ("colour=red", "label>3", "path<=2"):
        with pytest.raises(DataError) as own:
            local.search_embedding(query, 3, filter=text)
        with pytest.raises(DataError) as qdrant:
            remote.search_embedding(query, 3, filter=text)
        assert str(qdrant.value) == str(own.value).replace("this index", "Qdrant collection 'dva'")
    listed = r"no field 'colour' in Qdrant collection 'dva' \(fields: label, path, price, tags, year\)"
    with pytest.raises(DataError, match=listed):
        remote.search_embedding(query, 3, filter="colour=red")


def test_a_collection_pushed_before_filters_is_refused_until_pushed_again(fields_index, tmp_path):
    index_dir, _, _ = fields_index
    index = GalleryIndex.load(index_dir)
    old = QdrantGallery(QdrantConfig(path=tmp_path / "qdrant", collection="old"), index.embed_dim, create=True)
    try:
        # what the previous version wrote: the metadata row as the payload, nothing else
        points = old._models.Batch(
            ids=index.ids.tolist(), vectors=np.asarray(index.embeddings).tolist(), payloads=list(index.rows)
        )
        old._client.upsert("old", points=points, wait=True)
        searcher = Searcher(index_dir, backend=old)
        query = np.asarray(index.embeddings[0])
        assert len(searcher.search_embedding(query, 3)) == 3  # unfiltered search still works
        with pytest.raises(DataError, match=r"collection 'old' was pushed before filters.*push it again"):
            searcher.search_embedding(query, 3, filter="tags=red")
        with pytest.raises(DataError, match="pushed before filters"):
            old.check_filters([Filter.parse("label=class_0")])  # a built-in field too: not a silent []
        assert old.unfilterable_ids() == set(index.ids.tolist())
        assert push_index(index, old).upserted == len(index)  # no --refresh needed: the old points are rewritten
        assert old.unfilterable_ids() == set()
        expected = Searcher(index_dir).search_embedding(query, 3, filter="tags=red")
        assert [m.id for m in searcher.search_embedding(query, 3, filter="tags=red")] == [m.id for m in expected]
    finally:
        old.close()


def test_the_push_command_in_the_refusal_names_the_collection(tmp_path):
    server = QdrantGallery.__new__(QdrantGallery)
    server.config = QdrantConfig(url="http://qdrant:6333", collection="photos")
    assert server._push_command().startswith(
        "dva index --images GALLERY --out INDEX_DIR --backend qdrant "
        "--qdrant-url http://qdrant:6333 --collection photos"
    )
    server.config = QdrantConfig(path=tmp_path / "index" / "qdrant")
    assert server._push_command().startswith(f"dva index --images GALLERY --out {tmp_path / 'index'} --backend qdrant")


def test_a_server_collection_gets_payload_indexes_for_the_filter_keys(embedded, monkeypatch):
    created: list[tuple[str, str]] = []
    original = embedded._client.create_payload_index

    def record(collection, key, field_schema, **kw):
        created.append((key, str(field_schema.value)))
        with warnings.catch_warnings():  # "Payload indexes have no effect in the local Qdrant"
            warnings.simplefilter("ignore", UserWarning)
            return original(collection, key, field_schema=field_schema, **kw)  # the client accepts the schema

    monkeypatch.setattr(embedded._client, "create_payload_index", record)
    embedded._payload_indexes = True  # as with a server (embedded mode has no payload indexes)
    embedded.add([0], unit_rows(1, 16), [{"path": "a", "label": "x"}])
    embedded.add([1], unit_rows(1, 16, seed=2), [{"path": "b", "label": "x"}])  # once per process
    assert dict(created) == {
        "label": "keyword",
        "path": "keyword",
        "_dva_fields[].name": "keyword",
        "_dva_fields[].text": "keyword",
        "_dva_fields[].num": "float",
        "_dva_format": "integer",
    }
    assert len(created) == 6


def test_a_field_named_like_a_filter_key_is_refused(embedded):
    with pytest.raises(DataError, match="'_dva_fields': the name is reserved"):
        embedded.add([0], unit_rows(1, 16), [{"path": "a", "label": "x", "_dva_fields": 1}])


def test_serve_on_qdrant_filters_as_the_index_does(fields_index):
    from dva.serve import create_app

    index_dir, vectors, _ = fields_index
    local = Searcher(index_dir)
    query = np.asarray(local.index.embeddings[4]).tolist()
    with serve_in_thread(create_app(Searcher(index_dir, backend=vectors))) as url, httpx.Client(base_url=url) as client:
        for filters in (["tags=red", "year>2000"], ["price=12.0"]):
            body = client.post("/search/embedding", json={"embedding": query, "k": 3, "filter": filters}).json()
            expected = local.search_embedding(query, 3, filter=filters)
            assert expected and [r["id"] for r in body["results"]] == [m.id for m in expected]
        refused = client.post("/search/embedding", json={"embedding": query, "k": 3, "filter": ["colour=red"]})
        assert refused.status_code == 422 and "no field 'colour' in Qdrant collection" in refused.json()["detail"]


def test_cli_search_filters_on_qdrant(capsys, tmp_path):
    rows = write_fields_list(tmp_path)
    out = tmp_path / "index"
    build = ["index", *TINY_FROZEN, "--images", str(tmp_path / "list.jsonl"), "--out", str(out)]
    code, _, err = run_cli(capsys, *build, "--workers", "0", "--quiet", "--backend", "qdrant")
    assert code == 0, err
    query = ["search", "--index", str(out), rows[1]["path"], "-k", "3", "--json"]
    filters = ["--filter", "tags in red,green", "--filter", "year>=2001"]
    found = {}
    for backend in ("faiss", "qdrant"):
        code, stdout, err = run_cli(capsys, *query, *filters, "--backend", backend)
        assert code == 0, err
        found[backend] = json.loads(stdout)[0]["results"]
    kept = {r["path"] for r in rows if set(r["tags"]) & {"red", "green"} and int(r["year"]) >= 2001}
    assert len(found["qdrant"]) == 3 and {m["path"] for m in found["qdrant"]} <= kept
    assert [(m["id"], m["metadata"]) for m in found["qdrant"]] == [(m["id"], m["metadata"]) for m in found["faiss"]]
    code, _, err = run_cli(capsys, *query, "--filter", "colour=red", "--backend", "qdrant")
    assert code == 2 and err.count("\n") == 1 and "no field 'colour' in Qdrant collection 'dva'" in err


def test_cli_names_the_push_that_makes_an_old_collection_filterable(capsys, tmp_path):
    rows = write_fields_list(tmp_path)
    out = tmp_path / "index"
    build = ["index", *TINY_FROZEN, "--images", str(tmp_path / "list.jsonl"), "--out", str(out), "--workers", "0"]
    assert run_cli(capsys, *build, "--quiet", "--backend", "qdrant")[0] == 0
    index = GalleryIndex.load(out)
    old = QdrantGallery(QdrantConfig(path=out / "qdrant"), index.embed_dim)
    try:  # the payloads as the previous version pushed them: the metadata rows alone, no sync marker
        old.drop_marker()
        for i, row in zip(index.ids.tolist(), index.rows, strict=True):
            old._client.overwrite_payload("dva", payload=row, points=[i], wait=True)
    finally:
        old.close()
    search = ["search", "--index", str(out), rows[1]["path"], "-k", "3", "--json", "--backend", "qdrant"]
    code, _, err = run_cli(capsys, *search, "--filter", "tags=red")
    push = f"dva index --images GALLERY --out {out} --backend qdrant"
    assert code == 2 and "collection 'dva' was pushed before filters" in err and push in err
    # the command the error names, on the gallery the index was built from: nothing is embedded again
    push = push.replace("GALLERY", str(tmp_path / "list.jsonl"))
    code, stdout, err = run_cli(capsys, *push.split()[1:], "--json")
    assert code == 0 and json.loads(stdout)["vectordb"]["pushed"] == len(rows), err
    assert json.loads(stdout)["added"] == 0
    code, stdout, err = run_cli(capsys, *search, "--filter", "tags=red")
    assert code == 0 and {m["metadata"]["tags"].count("red") for m in json.loads(stdout)[0]["results"]} == {1}, err


def test_embedded_search_is_exact_cosine_with_metadata_and_add_remove(embedded):
    data = unit_rows(50, 16)
    rows = [{"path": f"/g/{i}.jpg", "label": f"c{i % 5}", "sku": i * 10} for i in range(50)]
    embedded.add(range(50), data, rows)
    assert len(embedded) == 50
    queries = unit_rows(3, 16, seed=1)
    hits = embedded.search(queries, 5)
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :5]
    assert [[h[0] for h in row] for row in hits] == truth.tolist()
    np.testing.assert_allclose([h[1] for h in hits[0]], (queries[0] @ data[truth[0]].T), atol=1e-5)
    best = hits[0][0]
    assert best[2] == rows[best[0]]  # the metadata row comes back with the hit
    embedded.remove([best[0], 999])  # an id that is not there is ignored
    assert len(embedded) == 49 and embedded.get(best[0]) is None
    assert best[0] not in [h[0] for h in embedded.search(queries[:1], 5)[0]]
    embedded.add([best[0]], data[best[0]][None] * 3.0, [{"path": "/g/back.jpg", "label": None}])  # re-added, any scale
    again = embedded.search(queries[:1], 1)[0][0]
    assert again[0] == best[0] and again[2]["path"] == "/g/back.jpg" and abs(again[1] - best[1]) < 1e-5


def test_add_refuses_mismatched_input(embedded):
    with pytest.raises(DataError, match=r"shape \(n, 16\)"):
        embedded.add([0], unit_rows(1, 8), [{"path": "a"}])
    with pytest.raises(DataError, match="one of each per image"):
        embedded.add([0, 1], unit_rows(1, 16), [{"path": "a"}])


def test_a_collection_of_another_dimension_or_a_missing_one_is_refused(tmp_path):
    QdrantGallery(QdrantConfig(path=tmp_path / "db", collection="c"), 16, create=True).close()
    with pytest.raises(DataError, match=r"collection 'c' holds 16 vectors, the index's model gives 32-d"):
        QdrantGallery(QdrantConfig(path=tmp_path / "db", collection="c"), 32)
    with pytest.raises(DataError, match=r"no Qdrant collection 'other'"):
        QdrantGallery(QdrantConfig(path=tmp_path / "db", collection="other"), 16)
    QdrantGallery(QdrantConfig(path=tmp_path / "db", collection="c"), 16).close()  # the refusals unlocked the folder


def test_the_embedded_folder_is_one_process_at_a_time(embedded, tmp_path):
    with pytest.raises(DataError, match=r"open in another process"):
        QdrantGallery(QdrantConfig(path=tmp_path / "qdrant", collection="test"), 16)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="either a server url"):
        QdrantConfig()
    with pytest.raises(ConfigError, match=r"http://host:port.*'localhost:6333'"):
        QdrantConfig(url="localhost:6333")
    with pytest.raises(ConfigError, match="collection"):
        QdrantConfig(url="http://localhost:6333", collection="a b")


def test_searcher_on_qdrant_returns_what_faiss_returns(pushed):
    _, index_dir, vectors = pushed
    local, remote = Searcher(index_dir), Searcher(index_dir, backend=vectors)
    queries = np.asarray(GalleryIndex.load(index_dir).embeddings[:4]) + 0.01
    for a, b in zip(local.search_embeddings(queries, 5), remote.search_embeddings(queries, 5), strict=True):
        assert [m.id for m in a] == [m.id for m in b]
        assert [(m.path, m.label, m.metadata) for m in a] == [(m.path, m.label, m.metadata) for m in b]
        np.testing.assert_allclose([m.score for m in a], [m.score for m in b], atol=1e-5)
    assert len(remote) == len(local) and remote.describe()["index"]["type"] == "qdrant"
    with pytest.raises(ConfigError, match="re-ranking"):
        remote.search_embeddings(queries, 5, rerank="aqe")


def test_serve_on_qdrant_searches_and_forgets_removed_images(pushed):
    from dva.serve import create_app

    gallery, index_dir, vectors = pushed
    searcher = Searcher(index_dir, backend=vectors)
    query = searcher.embed([gallery.paths[7]])[0]
    with serve_in_thread(create_app(searcher)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/healthz").json()["index"].startswith("qdrant embedded")
        body = client.post("/search/embedding", json={"embedding": query.tolist(), "k": 3}).json()
        assert body["results"][0]["id"] == 7 and body["results"][0]["name"] == gallery.paths[7].name
        assert client.get("/images/7").content == gallery.paths[7].read_bytes()
        # re-ranking needs the index's own embeddings: refused, on both endpoints, with 422
        refused = client.post("/search/embedding", json={"embedding": query.tolist(), "k": 3, "rerank": "aqe"})
        assert refused.status_code == 422 and refused.json()["detail"].startswith("rerank:")
        files = {"file": ("q.jpg", gallery.paths[7].read_bytes(), "image/jpeg")}
        refused = client.post("/search", files=files, data={"k": "3", "rerank": "dba"})
        assert refused.status_code == 422 and "vector database" in refused.json()["detail"]
        assert client.post("/search", files=files, data={"k": "3", "rerank": ""}).status_code == 200
        vectors.remove([7])
        body = client.post("/search/embedding", json={"embedding": query.tolist(), "k": 3}).json()
        assert 7 not in [r["id"] for r in body["results"]] and body["gallery_size"] == len(gallery.paths) - 1
        assert client.get("/images/7").status_code == 404
        assert client.get(f"/images/{len(gallery.paths) - 1}").status_code == 200  # ids after a gap still work


def test_cli_index_fills_the_embedded_database_and_search_uses_it(capsys, tmp_path):
    from conftest import write_gallery

    photos = write_gallery(tmp_path / "photos", num_classes=3, per_class=3)
    out = tmp_path / "index"
    build = [
        "index",
        *TINY_FROZEN,
        "--images",
        str(photos.root),
        "--out",
        str(out),
        "--workers",
        "0",
        "--quiet",
        "--backend",
        "qdrant",
    ]
    code, stdout, err = run_cli(capsys, *build)
    assert code == 0, err
    assert "9 images upserted into qdrant embedded" in stdout and (out / "qdrant").is_dir()
    assert "0 deleted (every id compared; 9 there now)" in stdout  # a new collection: no marker yet
    class_image(0, 99).save(photos.root / "class_0" / "new.jpg")
    code, stdout, err = run_cli(capsys, *build, "--json")
    assert code == 0, err
    pushed = json.loads(stdout)["vectordb"]
    assert (pushed["pushed"], pushed["deleted"], pushed["incremental"]) == (1, 0, True)  # only the new image
    code, stdout, err = run_cli(capsys, *build, "--remove", str(photos.paths[0]))
    assert code == 0 and "0 images upserted" in stdout and "1 deleted (changes since the last push; 9 there" in stdout
    searches = []
    for backend in ("faiss", "qdrant"):
        code, stdout, err = run_cli(
            capsys, "search", "--index", str(out), str(photos.paths[4]), "-k", "3", "--json", "--backend", backend
        )
        assert code == 0, err
        searches.append([(m["id"], m["path"]) for m in json.loads(stdout)[0]["results"]])
    assert searches[0] == searches[1] and searches[1][0][1] == str(photos.paths[4])


def test_a_database_that_goes_away_is_503_and_its_address_stays_in_the_log(pushed, capfd):
    from dva.index.vectordb import _server_client
    from dva.serve import create_app

    gallery, index_dir, vectors = pushed
    searcher = Searcher(index_dir, backend=vectors)
    query = searcher.embed([gallery.paths[0]])[0].tolist()
    vectors.close()  # the database goes away under a running server: its calls now meet a closed port
    url = closed_port_url()
    vectors.config = QdrantConfig(url=url)
    vectors._client = _server_client(vectors.config)
    with serve_in_thread(create_app(searcher)) as address, httpx.Client(base_url=address, timeout=60) as client:
        answer = client.post("/search/embedding", json={"embedding": query, "k": 3})
        assert answer.status_code == 503 and url not in answer.text
        with open(gallery.paths[0], "rb") as f:
            assert client.post("/search", files={"file": ("q.jpg", f, "image/jpeg")}).status_code == 503
        assert client.get("/images/0").status_code == 503  # not 404: the image may well be there
    assert f"{url}: cannot reach the Qdrant server" in capfd.readouterr().err


@pytest.mark.parametrize("command", ["search", "serve", "index"])
def test_an_unreachable_server_is_one_line_naming_it_and_exit_2(capsys, gallery_index, tmp_path, command):
    gallery, index_dir = gallery_index
    url = closed_port_url()
    args = {
        "search": ["search", "--index", str(index_dir), str(gallery.paths[0])],
        "serve": ["serve", "--index", str(index_dir), "--port", "1"],
        "index": [
            "index",
            "--images",
            str(gallery.root),
            "--out",
            str(tmp_path / "new"),
            "--frozen",
            "--backbone",
            TINY_BACKBONE,
            "--no-pretrained",
            "--workers",
            "0",
            "--quiet",
        ],
    }[command]
    code, _, err = run_cli(capsys, *args, "--backend", "qdrant", "--qdrant-url", url)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {url}: cannot reach the Qdrant server")
    assert not (tmp_path / "new").exists()  # `dva index` checked before embedding anything


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_a_server_that_refuses_the_key_or_is_not_qdrant(monkeypatch):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def answer(request: Request) -> JSONResponse:  # a web server that knows nothing of Qdrant, behind a key
        if request.headers.get("api-key") != "right":
            return JSONResponse({"status": "unauthorized"}, status_code=401)
        return JSONResponse({"detail": "no such route"}, status_code=404)

    app = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST", "PUT", "DELETE"])])

    monkeypatch.setenv("DVA_TEST_QDRANT_KEY", "wrong")
    with serve_in_thread(app) as url:
        config = QdrantConfig(url=url, api_key_env="DVA_TEST_QDRANT_KEY")
        with pytest.raises(DataError, match=r"refused the API key \(HTTP 401\); set it in \$DVA_TEST_QDRANT_KEY"):
            check_server(config)
        monkeypatch.setenv("DVA_TEST_QDRANT_KEY", "right")  # the key is sent: now the server answers 404
        with pytest.raises(DataError, match=r"answered HTTP 404 .*is it a Qdrant server"):
            check_server(config)


def test_without_qdrant_client_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # import qdrant_client now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'dva\[qdrant\]'"):
        QdrantGallery(QdrantConfig(path=tmp_path / "db"), 16, create=True)


def test_push_brings_the_collection_to_exactly_the_indexs_images(pushed):
    _, index_dir, vectors = pushed
    index = GalleryIndex.load(index_dir)
    vectors.remove(index.ids.tolist())
    assert push_index(index, vectors).upserted == len(index)  # an emptied (or new, or lagging) collection is filled
    assert push_index(index, vectors).upserted == 0  # nothing missing: nothing upserted
    stale = int(max(index.ids)) + 100  # a point of an image the index no longer holds
    vectors.add([stale], np.ones((1, vectors.embed_dim), dtype=np.float32), [{"path": "gone.jpg", "label": "x"}])
    assert push_index(index, vectors) == PushReport(upserted=0, deleted=1, incremental=False)
    assert vectors.ids() == {int(i) for i in index.ids}
    assert push_index(index, vectors, refresh=True).upserted == len(index)  # refresh: rewrite every image


# --- incremental pushes: an index updated version by version, embedded without a model ---

DIM = 16


def fake_embed(model, items):
    """One unit vector per file, seeded by its bytes: a changed file gets a new vector, and no
    network runs (the push, not the embedding, is under test)."""
    from dva.evaluate.embed import Embeddings

    seeds = [int.from_bytes(hashlib.sha256(item.path.read_bytes()).digest()[:4], "little") for item in items]
    vectors = np.array([unit_rows(1, DIM, seed=s)[0] for s in seeds], np.float32).reshape(len(items), DIM)
    return Embeddings(vectors, np.zeros(len(items), np.int64), np.arange(len(items))), 0.0


class Photos:
    """A gallery of small files and its index, updated by :meth:`index` (one version per call)."""

    def __init__(self, root):
        self.root, self.out = root / "photos", root / "index"
        self.root.mkdir(parents=True)

    def write(self, name: str, content: str) -> None:
        (self.root / name).write_text(content)

    def index(self, images: dict[str, tuple[str | None, dict]], remove: tuple[str, ...] = ()) -> GalleryIndex:
        from dva.index import GalleryItem, IndexModel
        from dva.index.build import build_index_dir

        for name in images:
            if not (self.root / name).exists():
                self.write(name, f"photo {name}")
        items = [GalleryItem(self.root / name, label, fields) for name, (label, fields) in images.items()]
        build_index_dir(
            self.out,
            items,
            model=IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG),
            index_type=None,
            approx_threshold=None,
            embedder=fake_embed,
            remove=[self.root / name for name in remove],
        )
        return GalleryIndex.load(self.out)

    def id(self, index: GalleryIndex, name: str) -> int:
        return index.ids_by_path[str(self.root / name)]


def six(label: str = "old") -> dict[str, tuple[str | None, dict]]:
    return {f"a{i}": (label, {"n": i}) for i in range(6)}


def open_embedded(path, collection: str = "inc") -> QdrantGallery:
    return QdrantGallery(QdrantConfig(path=path, collection=collection), DIM, create=True)


def contents(gallery: QdrantGallery) -> dict[int, tuple[dict, list[float]]]:
    """Every point's full payload (derived keys included) and vector: what two collections must agree on."""
    ids = sorted(gallery._scroll_ids(None))
    points = gallery._client.retrieve(gallery.config.collection, ids=ids, with_payload=True, with_vectors=True)
    return {int(p.id): (p.payload, np.round(p.vector, 5).tolist()) for p in points}


def assert_same_as_a_fresh_push(index: GalleryIndex, gallery: QdrantGallery, folder) -> None:
    """``gallery`` holds what a full push of ``index`` into a new collection gives: ids,
    payloads, vectors and search results."""
    fresh = open_embedded(folder)
    try:
        assert push_index(index, fresh).incremental is False
        assert contents(gallery) == contents(fresh)
        queries = unit_rows(4, DIM, seed=7)
        assert rounded(gallery.search(queries, 5)) == rounded(fresh.search(queries, 5))
        assert len(gallery) == len(fresh) == len(index)
    finally:
        fresh.close()


def rounded(results: list[list[tuple[int, float, dict]]]) -> list[list[tuple[int, float, dict]]]:
    return [[(i, round(score, 5), row) for i, score, row in hits] for hits in results]


def refuse(*args, **kwargs):
    raise AssertionError("an incremental push must not read every id of the collection")


def test_an_incremental_push_equals_a_full_one_and_sends_only_the_changes(tmp_path, monkeypatch):
    photos = Photos(tmp_path)
    first = photos.index(six())
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        assert push_index(first, gallery) == PushReport(6, 0, incremental=False)  # a new collection: no marker
        photos.write("a2", "photo a2, edited")  # re-embedded: a new id, the old one leaves
        images = {**six(), "a3": ("new", {"n": 3}), "a4": ("old", {"n": 40}), "b0": ("new", {}), "b1": (None, {})}
        second = photos.index(images, remove=("a0", "a1"))
        assert second.manifest["uuid"] == first.manifest["uuid"]  # an update keeps the index's identity
        assert photos.id(second, "a3") == photos.id(first, "a3")  # a relabel keeps the id...
        assert photos.id(second, "a2") != photos.id(first, "a2")  # ...a re-embedding does not
        changed = sorted(photos.id(second, name) for name in ("a2", "a3", "a4", "b0", "b1"))
        upserted: list[int] = []
        upsert = QdrantGallery._upsert
        monkeypatch.setattr(QdrantGallery, "ids", refuse)
        monkeypatch.setattr(QdrantGallery, "unfilterable_ids", refuse)
        monkeypatch.setattr(QdrantGallery, "_upsert", lambda self, *a: (upserted.extend(a[0]), upsert(self, *a)))
        assert push_index(second, gallery) == PushReport(len(changed), 3, incremental=True)  # a0, a1, a2's old id
        assert sorted(upserted) == changed
        assert push_index(second, gallery) == PushReport(0, 0, incremental=True)  # in sync: nothing sent
        monkeypatch.undo()
        assert gallery.sync_marker() == {"index": second.manifest["uuid"], "version": second.version}
        assert gallery.get(photos.id(second, "a3"))["label"] == "new"
        assert_same_as_a_fresh_push(second, gallery, tmp_path / "fresh")
    finally:
        gallery.close()


def test_a_push_that_dies_before_its_marker_is_completed_by_the_next(tmp_path, monkeypatch):
    photos = Photos(tmp_path)
    first = photos.index(six())
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        push_index(first, gallery)
        photos.write("a1", "photo a1, edited")
        second = photos.index({**six(), "a5": ("new", {"n": 5}), "b0": ("new", {})}, remove=("a0",))

        def die(self, index_id, version):
            raise RuntimeError("killed before the marker")

        monkeypatch.setattr(QdrantGallery, "mark_synced", die)
        with pytest.raises(RuntimeError, match="killed"):
            push_index(second, gallery)
        monkeypatch.undo()
        assert gallery.sync_marker() == {"index": first.manifest["uuid"], "version": first.version}
        assert gallery.get(photos.id(second, "b0")) is not None  # the points were written before the marker
        assert push_index(second, gallery) == PushReport(3, 2, incremental=True)  # the same changes, again
        assert gallery.sync_marker() == {"index": second.manifest["uuid"], "version": second.version}
        assert_same_as_a_fresh_push(second, gallery, tmp_path / "fresh")
    finally:
        gallery.close()


def test_a_collection_of_another_index_gets_a_full_push(tmp_path):
    ours, theirs = Photos(tmp_path / "ours"), Photos(tmp_path / "theirs")
    other = theirs.index(six("theirs"))  # the same ids 0..5, other images
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        push_index(other, gallery)
        ours.index(six())
        index = ours.index({**six(), "a0": ("new", {"n": 0})})  # version 2: version 1 would be diffable
        assert index.manifest["uuid"] != other.manifest["uuid"] and index.version == 2
        assert push_index(index, gallery) == PushReport(6, 0, incremental=False)  # every point is rewritten
        assert gallery.sync_marker() == {"index": index.manifest["uuid"], "version": 2}
        assert_same_as_a_fresh_push(index, gallery, tmp_path / "fresh")
    finally:
        gallery.close()


def test_a_marker_older_than_the_history_falls_back_to_the_full_diff(tmp_path, monkeypatch):
    from dva.index.store import IndexDB

    photos = Photos(tmp_path)
    first = photos.index(six())
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        push_index(first, gallery)
        photos.index(six(), remove=("a0",))  # version 2 retires a0's row
        photos.index({k: v for k, v in six().items() if k != "a0"}, remove=("a1",))  # version 3 purges it
        latest = photos.index({f"a{i}": ("new" if i == 2 else "old", {"n": i}) for i in range(2, 6)})
        assert latest.version == 4
        assert latest.db.query("SELECT count(*) FROM images WHERE removed = 2") == [(0,)]  # the history is gone
        monkeypatch.setattr(IndexDB, "gone_since", refuse_gone_since)
        report = push_index(latest, gallery)
        assert report == PushReport(1, 2, incremental=False)  # a2 relabelled; a0 and a1 deleted
        monkeypatch.undo()
        assert gallery.get(photos.id(latest, "a2"))["label"] == "new"
        assert_same_as_a_fresh_push(latest, gallery, tmp_path / "fresh")
    finally:
        gallery.close()


def refuse_gone_since(self, since: int, version: int) -> list[int]:
    """The ids retired after ``since`` cannot be listed once their rows were purged: asking is the bug."""
    raise AssertionError(f"gone_since({since}, {version}) asked although the rows retired after {since} were purged")


def test_the_marker_is_invisible_to_search_len_get_and_ids(tmp_path):
    photos = Photos(tmp_path)
    index = photos.index(six())
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        push_index(index, gallery)
        assert gallery.sync_marker() == {"index": index.manifest["uuid"], "version": 1}
        ids = set(index.ids.tolist())
        assert len(gallery) == len(index) and gallery.ids() == ids and gallery.unfilterable_ids() == set()
        hits = gallery.search(unit_rows(3, DIM, seed=1), len(index) + 5)  # every point the search can reach
        assert all(len(h) == len(index) and {i for i, _, _ in h} == ids for h in hits)
        assert [gallery.get(i) for i in sorted(ids)] == index.rows and gallery.get(max(ids) + 1) is None
        gallery.close()
        gallery = QdrantGallery(gallery.config, DIM)  # the marker is stored with the collection
        assert gallery.sync_marker() == {"index": index.manifest["uuid"], "version": 1}
    finally:
        gallery.close()


def test_points_changed_outside_a_push_are_put_back(tmp_path):
    photos = Photos(tmp_path)
    index = photos.index(six())
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        push_index(index, gallery)
        gone = int(index.ids[0])
        gallery.remove([gone])  # through the gallery: the marker is dropped
        assert gallery.sync_marker() is None
        assert push_index(index, gallery) == PushReport(1, 0, incremental=False)
        assert gallery.sync_marker() is not None
        gallery._client.delete(gallery.config.collection, points_selector=[gone], wait=True)  # behind its back
        report = push_index(index, gallery)  # the count does not match: every id is compared
        assert report.incremental is False and report.upserted == 1 and gallery.get(gone) == index.rows[0]
        assert_same_as_a_fresh_push(index, gallery, tmp_path / "fresh")
    finally:
        gallery.close()


def test_an_index_made_before_identities_gets_one_at_its_next_update(tmp_path):
    photos = Photos(tmp_path)
    photos.index(six())
    manifest = json.loads((photos.out / "manifest.json").read_text())
    del manifest["uuid"]  # what dva wrote before indexes had an identity
    (photos.out / "manifest.json").write_text(json.dumps(manifest))
    gallery = open_embedded(tmp_path / "qdrant")
    try:
        assert push_index(GalleryIndex.load(photos.out), gallery) == PushReport(6, 0, incremental=False)
        assert gallery.sync_marker() is None  # nothing to name the index by: every push compares every id
        updated = photos.index(six(), remove=("a0",))
        assert len(updated.manifest["uuid"]) == 32
        assert push_index(updated, gallery) == PushReport(0, 1, incremental=False)
        assert gallery.sync_marker() == {"index": updated.manifest["uuid"], "version": 2}
        assert_same_as_a_fresh_push(updated, gallery, tmp_path / "fresh")
    finally:
        gallery.close()
