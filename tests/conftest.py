"""Shared fixtures: tiny generated datasets in the publishers' layouts and a tiny timm ViT.

Tests never download anything. ``test_vit`` is timm's own registered test model (6 blocks,
width 64, 0.3M parameters): a real timm ViT with a fused ``attn.qkv``, small enough that a
training step takes milliseconds at 32x32 pixels.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image

from dva.config import DataConfig, ModelConfig, RunConfig, TrainConfig

TINY_BACKBONE = "test_vit"
TINY_IMG = 32
#: `dva train` options of the tiny model, and of one quick epoch on the fake datasets.
TINY_MODEL = ("--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG))
QUICK_EPOCH = ("--epochs", "1", "--batch-size", "8", "--workers", "0")
#: `dva index/eval/search` options of the same model, frozen.
TINY_FROZEN = ("--frozen", *TINY_MODEL)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUB100 = SHARED / "data" / "cub100"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``dva ARGS`` in this process (what the entry point runs, without a new interpreter's
    start-up, which costs seconds of imports); returns the exit code, stdout and stderr."""
    from dva.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def class_image(label: int, index: int, size: int = 40, noise: float = 40.0) -> Image.Image:
    """An image whose class shows in its mean colour and stripe direction, under heavy jitter.

    The per-image colour jitter is as large as the distance between class colours, so a
    random network confuses classes often and training has something to learn.
    """
    rng = np.random.default_rng(label * 1000 + index)
    base = np.array([(label * 67) % 200 + 28, (label * 131 + 40) % 200 + 28, (label * 29 + 90) % 200 + 28])
    colour = base + rng.uniform(-70, 70, 3)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx if label % 2 else yy) // 3 % 2)[..., None] * 40.0 - 20.0
    pixels = colour + stripes + rng.normal(0, noise, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass
class FakeDataset:
    root: Path
    class_names: list[str]
    paths: list[Path]
    labels: list[int]


def write_cub(
    root: Path, *, num_classes: int = 6, per_class: int = 8, size: int = 40, official: bool = True
) -> FakeDataset:
    """A CUB-200-2011 layout (official: 1-based, space separated) or the cub100 one (0-based, ", ").

    Half of each class is flagged for training (flag "1" in the official layout, "0" in cub100's,
    whose flag is inverted, see ``dva.data.cub``), and each image gets a box.
    """
    sep, base = (" ", 1) if official else (", ", 0)
    train_flag, test_flag = ("1", "0") if official else ("0", "1")
    root.mkdir(parents=True, exist_ok=True)
    images, labels_lines, split_lines, boxes, paths, labels = [], [], [], [], [], []
    class_names = [f"{c + base:03d}.Species_{c}" if official else f"Species_{c}" for c in range(num_classes)]
    image_id = base
    for c, name in enumerate(class_names):
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"{name}/{i:04d}.jpg"
            class_image(c, i, size).save(root / "images" / rel, quality=95)
            images.append(f"{image_id}{sep}{rel}")
            labels_lines.append(f"{image_id}{sep}{c + base}")
            split_lines.append(f"{image_id}{sep}{train_flag if i % 2 == 0 else test_flag}")
            boxes.append(f"{image_id}{sep}4.0{sep}6.0{sep}20.0{sep}24.0")
            paths.append(root / "images" / rel)
            labels.append(c)
            image_id += 1
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels_lines) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split_lines) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c + base}{sep}{n}" for c, n in enumerate(class_names)) + "\n")
    if official:
        (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return FakeDataset(root, class_names, paths, labels)


@pytest.fixture
def cub_root(tmp_path: Path) -> FakeDataset:
    return write_cub(tmp_path / "CUB_200_2011")


@pytest.fixture
def cub100_like(tmp_path: Path) -> FakeDataset:
    return write_cub(tmp_path / "cub100", official=False)


def tiny_run_config(root: Path, *, dataset: str = "cub", **train_overrides) -> RunConfig:
    """A run on the tiny ViT that trains in seconds on a FakeDataset."""
    train = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "proxy_lr": 1e-1, "device": "cpu", **train_overrides}
    return RunConfig(
        model=ModelConfig(
            backbone=TINY_BACKBONE, pretrained=False, img_size=TINY_IMG, method="ica", method_options={"rank": 4}
        ),
        data=DataConfig(dataset=dataset, root=str(root), split="open", num_workers=0),
        train=TrainConfig(**train),
    )


def write_gallery(root: Path, *, num_classes: int = 4, per_class: int = 6, size: int = 40) -> FakeDataset:
    """A user's photo folder: ``root/<class>/<nn>.jpg`` (what ``dva index --images`` reads)."""
    class_names = [f"class_{c}" for c in range(num_classes)]
    paths, labels = [], []
    for c, name in enumerate(class_names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / name / f"{i:02d}.jpg"
            class_image(c, i, size).save(path, quality=95)
            paths.append(path)
            labels.append(c)
    return FakeDataset(root, class_names, paths, labels)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny ICA run trained for one epoch (read-only: copy it before changing it)."""
    from dva.train import Trainer

    root = tmp_path_factory.mktemp("trained")
    Trainer(tiny_run_config(write_cub(root / "cub").root, epochs=1), root / "run", progress=False).fit()
    return root / "run"


@pytest.fixture(scope="session")
def gallery_index(tmp_path_factory) -> tuple[FakeDataset, Path]:
    """A gallery and its index under the frozen tiny ViT (read-only: copy it before changing it)."""
    from dva.index import IndexModel, index_gallery, read_gallery

    root = tmp_path_factory.mktemp("gallery")
    gallery = write_gallery(root / "photos")
    model = IndexModel.frozen(TINY_BACKBONE, pretrained=False, img_size=TINY_IMG)
    index_gallery(root / "index", read_gallery(gallery.root), model=model, num_workers=0, progress=False)
    return gallery, root / "index"


@contextlib.contextmanager
def serve_in_thread(app, config: uvicorn.Config | None = None) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server in a thread, on a loopback port the OS picks;
    yield its URL. ``config`` carries dva's own server settings where a test needs them."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config or uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, headless, as every browser test drives it (Playwright's own is not used)."""
    return playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
        ],
    )
