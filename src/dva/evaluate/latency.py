"""Per-image inference latency, measured one way for every model (the paper's Table 8 column).

Batch 1, after warm-up, the median of repeated timings: what one query costs a deployed
retrieval system, robust to the odd slow call a shared machine produces. Models are timed as
deployed: :meth:`RetrievalModel.merge_adapters` first (ICA then costs exactly what the frozen
model costs), inference mode, the run's precision, CUDA synchronised around each call, one
CPU thread on the CPU; models compared in one table are timed interleaved.
A detector used at test time (Table 8's "Base + ICA + OPA") is timed separately on real
images with :func:`measure_detector_latency`, and its time is added per image.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

from dva.models.retrieval import RetrievalModel
from dva.runtime import autocast, resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Latency:
    """Milliseconds per image: median and spread of ``repeats`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_call(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes, CUDA synchronised on both sides when ``device`` is CUDA.

    The one timing primitive of the project: latency here and every timed row of bench/speed.py
    go through it. How repetitions are summarised is the caller's choice, by purpose: a latency
    is reported as the median (what a query costs), a throughput benchmark on a shared machine as
    the fastest repetition (other processes only add time); docs/speed.md says which is which.
    """
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _summarise(seconds: Sequence[float], device: str) -> Latency:
    ms = sorted(1000.0 * s for s in seconds)
    decile = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
    return Latency(statistics.median(ms), decile[0], decile[-1], len(ms), device)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (None: leave torch's setting)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def compare_latency(
    models: Mapping[str, RetrievalModel],
    *,
    img_size: int,
    device: str | torch.device = "auto",
    precision: str = "auto",
    warmup: int = 10,
    repeats: int = 50,
    merge: bool = True,
    threads: int | None = 1,
) -> dict[str, Latency]:
    """Median milliseconds of one forward pass on one ``img_size`` image, for each of ``models``.

    The models are timed interleaved, one call each in turn, so a change of load on the machine
    hits all of them alike. ``merge=True`` times merged copies (the callers' models are left as
    they are), as deployment runs them. On the CPU, ``threads`` intra-op threads are used:
    with several, a batch-1 call on a shared machine waits for whichever thread was descheduled
    (measured on 2 busy cores: medians of 20-175 ms for a model that takes 1.3 ms on one thread).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    image = torch.randn(1, 3, img_size, img_size, device=device)
    prepared = {}
    for name, model in models.items():
        if merge:
            model = copy.deepcopy(model)
            model.merge_adapters()
        prepared[name] = model.to(device).eval()
    times: dict[str, list[float]] = {name: [] for name in prepared}
    with cpu_threads(threads if device.type == "cpu" else None):
        for round_ in range(warmup + repeats):
            for name, model in prepared.items():
                with autocast(device, precision):
                    took = time_call(lambda model=model: model(image), device)
                if round_ >= warmup:
                    times[name].append(took)
    where = f"cpu, {threads} thread(s)" if device.type == "cpu" and threads else str(device)
    return {name: _summarise(t, where) for name, t in times.items()}


def measure_latency(model: RetrievalModel, *, img_size: int, **kwargs: Any) -> Latency:
    """:func:`compare_latency` for one model."""
    return compare_latency({"model": model}, img_size=img_size, **kwargs)["model"]


def measure_detector_latency(
    find: Callable[[T], Any], inputs: Sequence[T], *, warmup: int = 1, device: str = "cpu"
) -> Latency:
    """Median milliseconds of ``find`` (e.g. detection and view making) per input.

    Each input is timed once after ``warmup`` calls on the first one, so the figure covers
    real images of the dataset rather than one repeated input. ``device`` (where ``find``
    runs) is only recorded.
    """
    if not inputs:
        raise ValueError("measure_detector_latency needs at least one input")
    for _ in range(warmup):
        find(inputs[0])
    times = []
    for item in inputs:
        times.append(time_call(lambda item=item: find(item)))
    return _summarise(times, device)
