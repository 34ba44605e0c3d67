"""PyTorch datasets, samplers and collation for training and embedding.

Training is exactly reproducible and resumable mid-epoch: the batch order is a function of
``(seed, epoch)`` and each sample's augmentation is drawn from its own seed
``(seed, epoch, index)``, so skipping the first ``k`` batches after a resume reproduces the
uninterrupted run bit for bit, with any number of DataLoader workers.

Images that fail to decode never crash a job: the sample comes back empty, collation drops
it and reports the file, and the caller decides what is too many.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from dva.data.images import ImageDecodeError, load_image
from dva.data.records import ImageRecord
from dva.data.transforms import Transform
from dva.data.zoom import ZoomOutAugment
from dva.view_kinds import BACKGROUND, ORIGINAL


@dataclass
class Views:
    """The images one training record contributes, by kind (original, discriminative, ...)."""

    images: dict[str, Image.Image]
    #: Things worth counting in the training log, e.g. ``("no_box",)``.
    events: tuple[str, ...] = ()


#: Turns a decoded training image into its views; OPA provides object views, the default
#: gives the original image only (ICA-only training).
ViewMaker = Callable[[Image.Image, ImageRecord], Views]


def original_only(image: Image.Image, record: ImageRecord) -> Views:
    return Views({ORIGINAL: image})


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that does not depend on batch composition or worker assignment."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class TrainSample:
    views: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    failure: str | None = None


class TrainDataset(Dataset):
    """Indexed by ``(index, sample_seed)`` pairs from :class:`TrainBatchSampler`."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Transform,
        views: ViewMaker = original_only,
        background_label: int | None = None,
        zoom: ZoomOutAugment | None = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.views = views
        self.background_label = background_label
        #: Zooms out the original view only (docs/opa.md): the object views stay cut from the
        #: un-zoomed photo, at full resolution, so DPT has detail to transfer to the small object.
        self.zoom = zoom

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> TrainSample:
        index, seed = item
        record = self.records[index]
        try:
            image = load_image(record.path)
        except ImageDecodeError as e:
            return TrainSample(failure=str(e))
        views = self.views(image, record)
        if self.zoom is not None and ORIGINAL in views.images:
            views = Views({**views.images, ORIGINAL: self.zoom(views.images[ORIGINAL], seed)}, views.events)
        if BACKGROUND in views.images and self.background_label is None:
            raise ValueError("background views need a background label (the loss has no background proxy)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tensors = {kind: self.transform(img) for kind, img in views.images.items()}
        labels = {kind: self.background_label if kind == BACKGROUND else record.label for kind in tensors}
        return TrainSample(tensors, labels, views.events)


@dataclass
class TrainBatch:
    #: ``{kind: (images, labels)}``; kinds absent from every sample are absent here.
    views: dict[str, tuple[torch.Tensor, torch.Tensor]]
    failures: list[str]
    events: Counter

    @property
    def num_images(self) -> int:
        return sum(len(labels) for _, labels in self.views.values())


def collate_train(samples: list[TrainSample]) -> TrainBatch:
    views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    kinds = [k for k in (ORIGINAL, *sorted({k for s in samples for k in s.views} - {ORIGINAL}))]
    for kind in kinds:
        present = [s for s in samples if kind in s.views]
        if present:
            views[kind] = (
                torch.stack([s.views[kind] for s in present]),
                torch.tensor([s.labels[kind] for s in present], dtype=torch.long),
            )
    events = Counter(e for s in samples for e in s.events)
    return TrainBatch(views, [s.failure for s in samples if s.failure], events)


class TrainBatchSampler:
    """Shuffled batches of ``(index, sample_seed)``; the global batch is split across ranks.

    ``batch_size`` is the global batch (the paper's 32): with ``world_size`` ranks each rank
    gets ``batch_size // world_size`` consecutive items of every global batch, so a
    distributed run sees exactly the batches of a single-process run.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} training images is fewer than one batch of {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size  # drop the last, incomplete batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in mine]


#: Replaces an image by what the model should see of it, e.g. OPA's discriminative view at
#: test time (``dva eval --opa-test``); given the decoded image and its path.
ImageView = Callable[[Image.Image, Path], Image.Image]


class ImageDataset(Dataset):
    """Images for embedding (evaluation, indexing): ``(tensor | None, label, index, error)``."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Transform,
        labels: Sequence[int] | None = None,
        view: ImageView | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.view = view

    @classmethod
    def from_records(
        cls, records: Sequence[ImageRecord], transform: Transform, view: ImageView | None = None
    ) -> ImageDataset:
        return cls([r.path for r in records], transform, [r.label for r in records], view)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str | None]:
        try:
            image = load_image(self.paths[index])
        except ImageDecodeError as e:
            return None, self.labels[index], index, str(e)
        if self.view is not None:
            image = self.view(image, self.paths[index])
        return self.transform(image), self.labels[index], index, None


@dataclass
class ImageBatch:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str]]


def collate_images(samples: list[tuple[torch.Tensor | None, int, int, str | None]]) -> ImageBatch:
    good = [s for s in samples if s[0] is not None]
    images = torch.stack([s[0] for s in good]) if good else torch.empty(0)
    return ImageBatch(
        images=images,
        labels=torch.tensor([s[1] for s in good], dtype=torch.long),
        indices=torch.tensor([s[2] for s in good], dtype=torch.long),
        failures=[(s[2], s[3]) for s in samples if s[0] is None],
    )
