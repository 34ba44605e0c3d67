"""Measure what the worst uploads under `dva serve`'s caps cost a real server process.

    python scripts/probe_serve_limits.py [--json]

Builds a tiny index (timm's test_vit, random weights, 32 px: the model's own cost is not what
is measured), starts `dva serve` with its default limits in a subprocess, and sends it small
files that decode to 40 MP. For each, the server's extra peak resident memory (VmHWM, reset
through /proc/PID/clear_refs before each request) and the request's wall time; then 8 worst
cases at once while /healthz is polled. The figures go to docs/product.md ("Threat model and
limits").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from dva.serve.worst_uploads import encoded, handmade_png

MB = 1024 * 1024


def payloads() -> dict[str, bytes]:
    side = 6324  # 39.99 MP
    return {
        "1 x 39,999,999 PNG (refused)": handmade_png(1, 39_999_999, 0, 8, b"\x00", level=9),
        "6324 x 6324 RGBA PNG": handmade_png(side, side, 6, 8, b"\x0a\xc8\x1e\x80" * side),
        "6324 x 6324 16-bit gray PNG": handmade_png(side, side, 0, 16, b"\x03\xe8" * side),
        "6324 x 6324 palette PNG, transparency": encoded(Image.new("P", (side, side), 3), "PNG", transparency=3),
        "20000 x 2000 RGB PNG": handmade_png(20_000, 2_000, 2, 8, b"\x01\x02\x03" * 20_000),
        "6000 x 6000 JPEG": encoded(Image.new("RGB", (6000, 6000), (1, 2, 3)), "JPEG", quality=50),
        "6324 x 6324 GIF": encoded(Image.new("P", (side, side), 1), "GIF"),
        "6324 x 6324 WebP (lossless, refused)": encoded(
            Image.new("RGB", (side, side), (9, 9, 9)), "WEBP", lossless=True
        ),
        "4000 x 4000 WebP (lossless)": encoded(Image.new("RGB", (4000, 4000), (9, 9, 9)), "WEBP", lossless=True),
        "4000 x 4000 JPEG 2000": encoded(Image.new("RGB", (4000, 4000), (9, 9, 9)), "JPEG2000"),
        "5780 x 5780 AVIF": encoded(Image.new("RGB", (5780, 5780), (9, 9, 9)), "AVIF", quality=50, speed=10),
        "6324 x 6324 TIFF (deflate)": encoded(
            Image.new("RGB", (side, side), (9, 9, 9)), "TIFF", compression="tiff_adobe_deflate"
        ),
    }


def rss(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def post(client: httpx.Client, name: str, data: bytes) -> int:
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, data={"k": "3"}).status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dva-probe-"))
    (root / "photos").mkdir()
    for i in range(8):
        Image.new("RGB", (40, 40), (i * 30, 90, 200 - i * 20)).save(root / "photos" / f"{i}.jpg")
    dva = [sys.executable, "-m", "dva"]
    subprocess.run(
        [
            *dva,
            "index",
            "--frozen",
            "--backbone",
            "test_vit",
            "--no-pretrained",
            "--img-size",
            "32",
            "--images",
            str(root / "photos"),
            "--out",
            str(root / "index"),
            "--workers",
            "0",
            "--quiet",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*dva, "serve", "--index", str(root / "index"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "dva serve did not start"
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=300) as client:
            post(client, "warm.png", encoded(Image.new("RGB", (40, 40)), "PNG"))
            baseline = rss(server.pid, "VmRSS")
            for name, data in payloads().items():
                before = rss(server.pid, "VmRSS")
                reset_peak(server.pid)
                start = time.perf_counter()
                status = post(client, name, data)
                rows.append(
                    {
                        "upload": name,
                        "bytes": len(data),
                        "status": status,
                        "seconds": round(time.perf_counter() - start, 2),
                        "extra_peak_mb": round(rss(server.pid, "VmHWM") - before),
                        "rss_after_mb": round(rss(server.pid, "VmRSS")),
                    }
                )
            worst = payloads()["6324 x 6324 RGBA PNG"]
            health: list[float] = []
            done = threading.Event()

            def poll() -> None:
                while not done.is_set():
                    start = time.perf_counter()
                    httpx.get(url + "/healthz", timeout=60).raise_for_status()
                    health.append(time.perf_counter() - start)
                    time.sleep(0.05)

            reset_peak(server.pid)
            start = time.perf_counter()
            with ThreadPoolExecutor(9) as pool:
                watcher = pool.submit(poll)
                statuses = list(pool.map(lambda i: post(client, f"{i}.png", worst), range(8)))
                done.set()
                watcher.result()
            concurrent = {
                "statuses": statuses,
                "seconds": round(time.perf_counter() - start, 2),
                "peak_rss_mb": round(rss(server.pid, "VmHWM")),
                "baseline_rss_mb": round(baseline),
                "rss_after_mb": round(rss(server.pid, "VmRSS")),
                "healthz_max_seconds": round(max(health), 2),
                "healthz_answers": len(health),
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "baseline_rss_mb": round(baseline),
        "uploads": rows,
        "eight_at_once": concurrent,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"server baseline {baseline:.0f} MB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| upload | bytes | status | seconds | extra peak MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['upload']} | {r['bytes']:,} | {r['status']} | {r['seconds']} | {r['extra_peak_mb']} |")
    print(f"8 at once: {concurrent}")


if __name__ == "__main__":
    main()
