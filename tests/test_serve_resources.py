"""What the worst uploads under every cap cost the server (issue 13, item 1), measured for real.

The server runs on a loopback port in this process, so its memory is this process's: the
peak resident size (``VmHWM``) is reset through ``/proc/self/clear_refs`` before each upload
and read after it. The payloads are small files (a few hundred KB) that decode to 40 MP.
Times have a 3x margin over the issue's 2 s target (a shared 2-core machine is noisy);
memory needs none.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import serve_in_thread
from PIL import Image

from dva.index import Searcher
from dva.serve import ServeSettings, create_app
from dva.serve.worst_uploads import encoded, handmade_png

MB = 1024 * 1024
#: The issue's targets: one accepted upload < 300 MB extra; 8 at once keep a ~1 GB server under 2 GB.
ONE_UPLOAD_MB = 300
EIGHT_UPLOADS_MB = 900
SECONDS = 6.0  # the target is 2 s; 3x for a noisy shared machine


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    side = 6324  # 39.99 MP, under the default 40 MP cap
    return {
        "rgba.png": handmade_png(side, side, 6, 8, b"\x0a\xc8\x1e\x80" * side),
        "gray16.png": handmade_png(side, side, 0, 16, b"\x03\xe8" * side),
        "palette.png": encoded(Image.new("P", (side, side), 3), "PNG", transparency=3),
        "wide.png": handmade_png(20_000, 2_000, 2, 8, b"\x01\x02\x03" * 20_000),
        "big.jpg": encoded(Image.new("RGB", (6000, 6000), (1, 2, 3)), "JPEG", quality=50),
        # WebP's decoder holds ~3 full-size RGBA buffers: its cap is ~17 MP, so 16 MP is its worst case
        "big.webp": encoded(Image.new("RGB", (4000, 4000), (9, 9, 9)), "WEBP", lossless=True),
    }


@pytest.fixture(scope="module")
def server(gallery_index):
    _, index = gallery_index
    with serve_in_thread(create_app(Searcher(index), ServeSettings())) as url:
        yield url


def _peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _post(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, data={"k": "3"})


def test_each_worst_case_upload_costs_little(server, payloads):
    with httpx.Client(base_url=server, timeout=120) as client:
        assert _post(client, "warm.png", encoded(Image.new("RGB", (40, 40)), "PNG")).status_code == 200
        for name, data in payloads.items():
            assert len(data) < 1 * MB
            base = _rss("VmRSS")
            _peak_reset()
            start = time.perf_counter()
            response = _post(client, name, data)
            seconds = time.perf_counter() - start
            extra = _rss("VmHWM") - base
            assert response.status_code == 200, (name, response.text)
            assert extra < ONE_UPLOAD_MB, f"{name}: +{extra:.0f} MB"
            assert seconds < SECONDS, f"{name}: {seconds:.1f} s"


def test_webp_above_its_decoder_cap_is_refused(server):
    webp = encoded(Image.new("RGB", (6324, 6324), (9, 9, 9)), "WEBP", lossless=True)  # cost 580 MB
    with httpx.Client(base_url=server, timeout=120) as client:
        response = _post(client, "big.webp", webp)
    assert response.status_code == 413 and "pixel limit of WEBP images" in response.json()["detail"]


def test_a_one_pixel_high_strip_is_refused_at_once(server):
    strip = handmade_png(1, 39_999_999, 0, 8, b"\x00")  # 40 MP in 80 KB: cost 33 s and 10 GB to resize
    assert len(strip) < 1 * MB
    with httpx.Client(base_url=server, timeout=120) as client:
        base = _rss("VmRSS")
        _peak_reset()
        start = time.perf_counter()
        response = _post(client, "strip.png", strip)
        assert response.status_code == 413 and "1x39999999" in response.json()["detail"]
        assert time.perf_counter() - start < SECONDS and _rss("VmHWM") - base < ONE_UPLOAD_MB


def test_eight_worst_case_uploads_at_once_stay_bounded_and_healthz_answers(server, payloads):
    data = payloads["rgba.png"]
    health_times: list[float] = []
    done = threading.Event()

    def health() -> None:
        with httpx.Client(base_url=server, timeout=30) as client:
            while not done.is_set():
                start = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                health_times.append(time.perf_counter() - start)
                time.sleep(0.05)

    base = _rss("VmRSS")
    _peak_reset()
    with httpx.Client(base_url=server, timeout=120) as client, ThreadPoolExecutor(max_workers=9) as pool:
        watcher = pool.submit(health)
        statuses = list(pool.map(lambda i: _post(client, f"{i}.png", data).status_code, range(8)))
        done.set()
        watcher.result()
    extra = _rss("VmHWM") - base
    assert statuses == [200] * 8
    assert extra < EIGHT_UPLOADS_MB, f"+{extra:.0f} MB"
    assert health_times and max(health_times) < SECONDS


def test_sides_and_aspect_ratio_are_capped_from_the_header(tmp_path):
    from dva.data.images import ImageTooLargeError, load_image

    for size, message in [((16_000, 900), "aspect ratio"), ((30_000, 2_000), "side over")]:
        path = tmp_path / f"{size[0]}.png"
        path.write_bytes(handmade_png(*size, 0, 8, bytes(size[0])))
        with pytest.raises(ImageTooLargeError, match=message):
            load_image(path)
    ok = tmp_path / "ok.png"
    ok.write_bytes(handmade_png(8_000, 600, 2, 8, bytes(24_000)))  # 1:13.3 is a panorama, not an attack
    assert load_image(ok, shrink=True).size == (2000, 150)
