"""Service defects a security probe found (issue 13): what /images serves, slow clients,
API keys, and request fields that were read too leniently. Real server on a loopback port."""

from __future__ import annotations

import shutil
import socket

import httpx
import pytest
from conftest import TINY_BACKBONE, TINY_IMG, run_cli, serve_in_thread, write_gallery

from dva.errors import ConfigError
from dva.index import IndexModel, Searcher, index_gallery, read_gallery
from dva.serve import ServeSettings, create_app, server_config

KEY = "clé-ü"  # not ASCII: sent as UTF-8 bytes by clients


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    gallery = write_gallery(root / "photos", num_classes=2, per_class=3)
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    index_gallery(root / "index", read_gallery(gallery.root), model=model, num_workers=0, progress=False)
    settings = ServeSettings(api_key=KEY, header_timeout=1.0, body_timeout=1.0)
    app = create_app(Searcher(root / "index"), settings)
    with serve_in_thread(app, server_config(app, settings, log_level="warning")) as url:
        yield url, gallery, root


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-API-Key": KEY.encode()}, timeout=30)


def test_images_serves_only_gallery_files_that_are_still_images(site):
    url, gallery, root = site
    secret = root / "secret.txt"
    secret.write_text("root:x:0:0 the server's secrets")
    with _client(url) as client:
        assert client.get("/images/0").headers["content-type"] == "image/jpeg"
        # a registered image swapped for a symlink to a file outside the gallery, then for text
        target = gallery.paths[1]
        original = target.read_bytes()
        target.unlink()
        target.symlink_to(secret)
        try:
            response = client.get("/images/1")
            assert response.status_code == 404 and b"root:x" not in response.content
            target.unlink()
            target.write_text("plain text where an image was")
            assert client.get("/images/1").status_code == 404
            # a symlink to another image of the gallery is still a gallery image
            target.unlink()
            target.symlink_to(gallery.paths[4])
            served = client.get("/images/1")
            assert served.status_code == 200 and served.content == gallery.paths[4].read_bytes()
            assert served.headers["content-type"] == "image/jpeg"
        finally:
            target.unlink()
            target.write_bytes(original)
        # a PNG saved under a .jpg name is served as what it is
        png = gallery.paths[2]
        saved = png.read_bytes()
        shutil.copy(png, root / "backup.jpg")
        from PIL import Image

        Image.open(root / "backup.jpg").save(png, format="PNG")
        try:
            assert client.get("/images/2").headers["content-type"] == "image/png"
        finally:
            png.write_bytes(saved)


def test_api_key_is_compared_as_utf8_and_an_empty_one_is_refused(site, gallery_index, monkeypatch, capsys):
    url, _, _ = site
    assert httpx.get(url + "/healthz", headers={"X-API-Key": KEY.encode()}).status_code == 200
    assert httpx.get(url + "/healthz", headers={"X-API-Key": KEY.encode("latin-1")}).status_code == 401
    with pytest.raises(ConfigError, match="empty"):
        create_app(Searcher(gallery_index[1]), ServeSettings(api_key=""))
    monkeypatch.setenv("DVA_API_KEY", "")
    code, _, err = run_cli(capsys, "serve", "--index", str(gallery_index[1]))
    assert code == 2 and "DVA_API_KEY is set but empty" in err


def test_request_fields_are_read_strictly(site):
    url, _, _ = site
    with _client(url) as client:
        assert client.post("/search/embedding", json={"embedding": [1.0] * 64, "k": True}).status_code == 422
        huge = client.post("/search/embedding", json={"embedding": [1e38] * 64, "k": 2})
        assert huge.status_code == 200 and len(huge.json()["results"]) == 2  # finite, if large
        infinite = client.post("/search/embedding", json={"embedding": [1e39] * 64, "k": 2})
        assert infinite.status_code == 422 and "infinite" in infinite.text


def test_slow_clients_are_cut_off(site):
    url, _, _ = site
    port = int(url.rsplit(":", 1)[1])
    half_sent = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        half_sent.append(s)
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(
        b"POST /search/embedding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"embedding": ['
    )
    try:
        for s in half_sent:  # closed by the server within its 1 s header timeout (margin for a busy machine)
            s.settimeout(8)
            assert s.recv(100) == b""
        slow_body.settimeout(8)
        assert slow_body.recv(200).startswith(b"HTTP/1.1 408")
        with _client(url) as client:
            assert client.get("/healthz").status_code == 200  # and the server still answers
    finally:
        for s in [*half_sent, slow_body]:
            s.close()
