"""Screenshot the search page (docs/img/serve.png) after a real search, in headless chromium.

    python scripts/serve_screenshot.py --index INDEX_DIR --query QUERY.jpg --out docs/img/serve.png \
        [--filter "label in A,B"]

Starts the app on a free loopback port, types the filter (if any) into the page, drops QUERY
into it and saves what the browser shows once every thumbnail has loaded. A calibrated index
(`dva calibrate`) shows each match's same-item flag.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

from dva.index import Searcher
from dva.serve import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--query", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--filter", default="", help="typed into the page's filter box (';' between filters)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Searcher(args.index)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
            page.fill("#k", str(args.k))
            if args.filter:
                page.fill("#filter", args.filter)
            page.set_input_files("#file", str(args.query))
            expect(page.locator(".result")).to_have_count(args.k, timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
