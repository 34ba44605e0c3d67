"""Speed and memory of dva, measured against the targets in docs/speed.md.

    python bench/speed.py [--device cpu|cuda] [--quick] [--only train,infer,e2e,recall,search]

Prints a markdown table and writes everything measured to bench/results/speed-<device>-<time>.json.

How it measures, so that the ratios mean something on a shared machine:

- Every ratio compares two measurements of the same run on the same machine, taken in
  alternation (A B A B ...), so load from other processes hits both alike. Each reported time
  is the fastest of its repetitions: other processes can only add time, so the minimum is the
  best estimate of the work itself. The load average is recorded before and after.
- Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what the model holds before
  the measured work; on CPU, the growth of the peak resident set size (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs``) of a fresh process that does only that measurement.
- Weights are random (``pretrained=False``): speed does not depend on their values. The model
  is the paper's ViT-B/16 (``vit_base_patch16_224``); on CPU at a reduced image size (``--img-size``).

Rows:

- train: one optimizer step (forward, Proxy-Anchor loss, backward, Adam) as ``dva train``
  takes it, ICA (q,v, rank 16) vs full fine-tuning: time and peak memory;
- infer: batch-1 latency and batch throughput of the plain timm model, ICA merged (what
  ``dva index``/``serve`` run) and ICA unmerged;
- e2e: embedding JPEG files through dva's DataLoader pipeline vs the model alone on tensors;
- recall: Recall@K + MAP@R (``dva.metrics``) on random embeddings, D = 768;
- search: ``dva.Searcher.search_embeddings`` vs raw FAISS on the same index.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCH = "vit_base_patch16_224"
RESULTS = Path(__file__).resolve().parent / "results"
CUB100_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cub100" / "images"
SECTIONS = ("train", "infer", "e2e", "recall", "search")


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call: the project's one timing primitive (:func:`dva.evaluate.latency.time_call`)."""
    from dva.evaluate.latency import time_call

    return time_call(fn, device)


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read())[1])


class PeakMemory:
    """Peak memory growth of the block, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self.base = _status("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh process (its own peak memory, nothing left from earlier rows)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def best(values: list[float]) -> float:
    """The fastest repetition (see the module docstring)."""
    return min(values)


def autocast_for(device: torch.device, precision: str):
    from dva.runtime import autocast

    return autocast(device, precision)


# --------------------------------------------------------------------------- rows


def training_step(
    method: str, img: int, batch: int, device: torch.device, precision: str, compiled: bool = False
) -> tuple[Callable[[], None], int]:
    """One optimizer step as ``dva train`` takes it (``Trainer.train_step``: forward, Proxy-Anchor
    loss, backward, Adam, the schedule's lr), as a closure over its own trainer and a fixed batch
    of random images; and the number of trainable parameters."""
    from collections import Counter

    from dva.config import ModelConfig, RunConfig, TrainConfig
    from dva.data.loaders import TrainBatch
    from dva.losses import ORIGINAL
    from dva.models import count_parameters
    from dva.train import Trainer

    torch.manual_seed(0)
    config = RunConfig(
        model=ModelConfig(backbone=ARCH, pretrained=False, img_size=img, method=method),
        train=TrainConfig(batch_size=batch, precision=precision, device=str(device), compile=compiled),
    )
    trainer = Trainer(config, "unused-run-dir", progress=False)  # nothing is written: no fit()
    trainer.prepare(num_classes=100, batches_per_epoch=1)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = (torch.arange(batch, device=device) // 2) % 100  # pairs: every proxy in the batch has positives
    fixed = TrainBatch(views={ORIGINAL: (images, labels)}, failures=[], events=Counter())

    def step() -> None:
        trainer.train_step(fixed, step=0)

    return step, count_parameters(trainer.model).trainable


def train_memory(method: str, img: int, batch: int, device_name: str, precision: str, threads: int) -> dict:
    """Peak memory of two training steps in a fresh process: the first allocates the gradients
    and the optimizer's state, which are part of what training costs."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    step, params = training_step(method, img, batch, device, precision)
    with PeakMemory(device) as memory:
        step()
        step()
    return {"method": method, "batch": batch, "peak_mib": memory.mib, "trainable_params": params}


def train_timing(
    plans: list[tuple[str, bool]], img: int, batch: int, steps: int, device_name: str, precision: str, threads: int
) -> dict:
    """Step times of every ``(method, compiled)`` plan, alternating step by step after one warm-up step each."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    names = [f"{method}{' compiled' if compiled else ''}" for method, compiled in plans]
    fns = {
        name: training_step(method, img, batch, device, precision, compiled)[0]
        for name, (method, compiled) in zip(names, plans, strict=True)
    }
    first = {name: timed(fn, device) for name, fn in fns.items()}  # warm-up; compiles the compiled plans
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {"batch": batch, "step_s": times, "first_step_s": first}


def inference(
    img: int, batches: list[int], reps: dict[int, int], device: torch.device, precision: str, compiled: bool
) -> dict:
    """Latency / throughput of plain timm vs ICA merged vs ICA unmerged, interleaved."""
    from dva.models import create_backbone, create_model

    torch.manual_seed(0)
    plain = create_backbone(ARCH, pretrained=False, img_size=img).to(device).eval()
    unmerged = create_model(backbone=ARCH, pretrained=False, img_size=img, method="ica").to(device).eval()
    with torch.no_grad():  # trained-looking adapters (up starts at zero)
        for name, p in unmerged.named_parameters():
            if ".up." in name:
                p.normal_(0, 0.02)
    merged = create_model(backbone=ARCH, pretrained=False, img_size=img, method="ica").to(device).eval()
    merged.load_state_dict(unmerged.state_dict())
    merged.merge_adapters()
    variants = {"plain timm": plain, "ICA merged": merged, "ICA unmerged": unmerged}
    if compiled:
        variants["plain timm, torch.compile"] = torch.compile(plain)
    variants["plain timm, channels_last input"] = plain  # only the patch-embedding conv can use it
    out: dict[str, Any] = {}
    for batch in batches:
        x = torch.randn(batch, 3, img, img, device=device)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.inference_mode(), autocast_for(device, precision):
            for name, model in variants.items():  # warm-up (and compilation)
                model(x_cl if "channels_last" in name else x)
            for _ in range(reps[batch]):
                for name, model in variants.items():
                    inp = x_cl if "channels_last" in name else x
                    times[name].append(timed(lambda model=model, inp=inp: model(inp), device))
        out[str(batch)] = {
            name: {"s": best(t), "img_per_s": batch / best(t), "reps": len(t)} for name, t in times.items()
        }
    return out


def end_to_end(
    images: list[Path], img: int, batch: int, workers: list[int], device: torch.device, precision: str, rounds: int
) -> dict:
    """dva's embedding pipeline from JPEG files (with each number of workers) vs the model on pre-loaded tensors."""
    from dva.data.loaders import ImageDataset
    from dva.evaluate.embed import embed_dataset, embedding_transform
    from dva.models import create_model

    model = create_model(backbone=ARCH, pretrained=False, img_size=img, method="frozen").to(device).eval()
    dataset = ImageDataset(images, embedding_transform(model, img))
    tensors = torch.stack([dataset[i][0] for i in range(len(dataset))])

    def from_files(num_workers: int) -> None:
        embed_dataset(
            model,
            dataset,
            batch_size=batch,
            num_workers=num_workers,
            device=device,
            precision=precision,
            progress=False,
        )

    def from_tensors() -> None:
        with torch.inference_mode(), autocast_for(device, precision):
            for start in range(0, len(tensors), batch):
                model(tensors[start : start + batch].to(device, non_blocking=True)).float().cpu()

    with torch.inference_mode():
        model(tensors[:2].to(device))
    files: dict[int, list[float]] = {w: [] for w in workers}
    memory = []
    for _ in range(rounds):
        for w in workers:
            files[w].append(timed(lambda w=w: from_files(w), device))
        memory.append(timed(from_tensors, device))
    # Per image on one thread, as in a DataLoader worker (workers run torch with one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode = timed(lambda: [dataset[i] for i in range(min(len(dataset), 64))], device) / min(len(dataset), 64)
    torch.set_num_threads(threads)
    return {
        "images": len(images),
        "batch": batch,
        "files_img_per_s": {str(w): len(images) / best(t) for w, t in files.items()},
        "tensors_img_per_s": len(images) / best(memory),
        "decode_transform_ms_per_img_one_core": 1000 * decode,
    }


def recall_cost(n: int, dim: int, threads: int) -> dict:
    """Time and peak memory of dva.metrics.retrieval_metrics on n random unit vectors."""
    torch.set_num_threads(threads)
    from dva.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, max(2, n // 50), n)  # ~50 images per class, like CUB
    with PeakMemory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        metrics = retrieval_metrics(x, labels)
        seconds = time.perf_counter() - start
    return {"n": n, "dim": dim, "seconds": seconds, "peak_mib": memory.mib, "recall@1": metrics["recall@1"]}


def search_cost(n: int, index_type: str, queries: int, rounds: int, root: Path) -> dict:
    """dva.Searcher.search_embeddings vs faiss ``index.search`` on the same index, k = 10."""
    import faiss

    from dva.evaluate.embed import Embeddings
    from dva.index import GalleryItem, IndexModel, Searcher
    from dva.index.build import build_index_dir

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 768), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [GalleryItem(Path(f"/gallery/{i:07d}.jpg"), str(i % 1000)) for i in range(n)]
    model = IndexModel.frozen(ARCH, pretrained=False, img_size=32)  # 768-d; never run here
    out = root / f"{index_type}-{n}"
    start = time.perf_counter()
    build_index_dir(
        out,
        items,
        model=model,
        index_type=index_type,
        approx_threshold=None,
        embedder=lambda m, todo: (Embeddings(vectors, np.zeros(n, np.int64), np.arange(n)), 0.0),
    )
    build_seconds = time.perf_counter() - start
    searcher = Searcher(out)
    index: faiss.Index = searcher.index.faiss_index
    q = rng.standard_normal((queries, 768), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    singles = q[: min(queries, 200)]
    cpu = torch.device("cpu")
    batch = {"dva": [], "faiss": []}
    for round_ in range(rounds):
        for name in ("dva", "faiss") if round_ % 2 == 0 else ("faiss", "dva"):
            run = (lambda: searcher.search_embeddings(q, 10)) if name == "dva" else (lambda: index.search(q, 10))
            batch[name].append(timed(run, cpu))
    # Alternating query by query, so load shifts hit both alike; who goes first alternates too,
    # because the second search of the same query walks a graph the first one left in the cache.
    single = {"dva": 0.0, "faiss": 0.0}
    searches = {"dva": lambda v: searcher.search_embeddings(v[None], 10), "faiss": lambda v: index.search(v[None], 10)}
    for i, v in enumerate(singles):
        for name in ("dva", "faiss") if i % 2 == 0 else ("faiss", "dva"):
            single[name] += timed(lambda name=name, v=v: searches[name](v), cpu)
    return {
        "n": n,
        "index": index_type,
        "build_s": build_seconds,
        "batch_queries": queries,
        "single_queries": len(singles),
        "batch_qps": {k: queries / best(v) for k, v in batch.items()},
        "single_qps": {k: len(singles) / v for k, v in single.items()},
    }


# --------------------------------------------------------------------------- the run


def machine(device: torch.device) -> dict:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        info["cpu"] = re.search(r"Model name:\s+(.+)", lscpu)[1].strip()
    except (OSError, subprocess.SubprocessError, TypeError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["flash_sdp"] = torch.backends.cuda.flash_sdp_enabled()
    import timm

    info["timm"] = timm.__version__
    info["timm_fused_attn"] = timm.layers.use_fused_attn()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="Small sizes: a few minutes on a laptop CPU.")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated subset of {','.join(SECTIONS)}.")
    parser.add_argument("--precision", default=None, help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp32.")
    parser.add_argument("--img-size", type=int, default=None, help="Default: 224 on CUDA, 112 on CPU (64 quick).")
    parser.add_argument("--batch-sizes", default=None, help="Training/throughput batches. Default: 32,128 on CUDA.")
    parser.add_argument("--compile", action="store_true", help="Also measure torch.compile (minutes of compiling).")
    parser.add_argument("--images", type=Path, default=CUB100_IMAGES, help="JPEG folder for the e2e row.")
    parser.add_argument("--workers", default=None, help="DataLoader workers to try for e2e (default: 0 and all cores).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or "auto"
    img = args.img_size or (224 if cuda else 64 if args.quick else 112)
    batches = [int(b) for b in (args.batch_sizes or ("32,128" if cuda else "8")).split(",")]
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "machine": machine(device),
        "device": str(device),
        "precision": precision,
        "img_size": img,
        "quick": args.quick,
        "model": ARCH,
        "pretrained": False,
    }
    print(
        f"# dva speed: {ARCH} (random weights) at {img}px on {device} ({precision}), "
        f"load average {result['machine']['load_average'][0]:.2f}",
        file=sys.stderr,
    )

    if "train" in sections:
        steps = 3 if args.quick else (10 if cuda else 5)
        plans = [("ica", False), ("full", False)] + ([("ica", True)] if args.compile else [])
        result["train"] = {"memory": [], "timing": []}
        for batch in batches:
            for method in ("ica", "full"):
                print(f"train {method} batch {batch}: memory ...", file=sys.stderr)
                result["train"]["memory"].append(
                    isolated(train_memory, method, img, batch, str(device), precision, threads)
                )
            print(f"train batch {batch}: step times, alternating ...", file=sys.stderr)
            result["train"]["timing"].append(
                isolated(train_timing, plans, img, batch, steps, str(device), precision, threads)
            )
    if "infer" in sections:
        print("inference ...", file=sys.stderr)
        throughput = 128 if cuda else 64
        sizes = sorted({1, throughput, *batches}) if cuda else [1, throughput]
        reps = {b: (30 if b == 1 else (10 if cuda else 5)) for b in sizes}
        result["infer"] = inference(img, sizes, reps, device, precision, args.compile)
    if "e2e" in sections:
        print("end-to-end embedding ...", file=sys.stderr)
        images, source = _e2e_images(args.images, 64 if args.quick else (2048 if cuda else 256))
        workers = [int(w) for w in args.workers.split(",")] if args.workers else [0, min(8, os.cpu_count() or 1)]
        result["e2e"] = {
            "source": source,
            **end_to_end(images, img, 64, workers, device, precision, rounds=1 if args.quick else 2),
        }
    if "recall" in sections:
        sizes = (5_000, 10_000, 20_000) if args.quick else (20_000, 50_000, 100_000)
        result["recall"] = []
        for n in sizes:
            print(f"recall@k on {n} ...", file=sys.stderr)
            result["recall"].append(isolated(recall_cost, n, 768, threads))
    if "search" in sections:
        result["search"] = []
        with tempfile.TemporaryDirectory() as tmp:
            plans = [(20_000, "flat"), (5_000, "hnsw")] if args.quick else [(100_000, "flat"), (20_000, "hnsw")]
            for n, kind in plans:
                print(f"search {kind} {n} ...", file=sys.stderr)
                result["search"].append(search_cost(n, kind, 1000, 5, Path(tmp)))
    result["machine"]["load_average_after"] = os.getloadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speed-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nresults: {path}", file=sys.stderr)


def _e2e_images(folder: Path, count: int) -> tuple[list[Path], str]:
    """``count`` JPEGs of ``folder``; without it (a bare GPU machine), photo-like generated ones."""
    files = sorted(folder.rglob("*.jpg"))[:count] if folder.is_dir() else []
    if len(files) == count:
        return files, str(folder)
    from PIL import Image

    target = Path(tempfile.mkdtemp(prefix="dva-bench-jpegs-"))
    rng = np.random.default_rng(0)
    for i in range(count):  # smooth colour fields with mild noise: JPEG sizes like real 500x375 photos
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(target / f"{i:05d}.jpg", quality=90)
    return sorted(target.glob("*.jpg")), f"generated 500x375 JPEGs in {target}"


# --------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    rows: list[tuple[str, str, str, str]] = []
    train = r.get("train", {"memory": [], "timing": []})
    for timing in train["timing"]:
        batch = timing["batch"]
        step = {name: best(times) for name, times in timing["step_s"].items()}
        mem = {m["method"]: m["peak_mib"] for m in train["memory"] if m["batch"] == batch}
        rows.append(
            (
                f"train step, batch {batch}: ICA vs full fine-tuning",
                f"{step['ica']:.3f} s vs {step['full']:.3f} s ({batch / step['ica']:.1f} vs "
                f"{batch / step['full']:.1f} img/s)",
                f"{step['ica'] / step['full']:.2f}",
                "< 1 (faster)",
            )
        )
        rows.append(
            (
                f"train peak memory, batch {batch}: ICA vs full",
                f"{mem['ica']:.0f} MiB vs {mem['full']:.0f} MiB",
                f"{mem['ica'] / mem['full']:.2f}",
                "< 1 (smaller)",
            )
        )
        if "ica compiled" in step:
            first = timing["first_step_s"]["ica compiled"]
            rows.append(
                (
                    f"train step, batch {batch}: ICA with torch.compile vs eager",
                    f"{step['ica compiled']:.3f} s vs {step['ica']:.3f} s (first step, compiling: {first:.0f} s)",
                    f"{step['ica compiled'] / step['ica']:.2f}",
                    "< 1 to be worth it",
                )
            )
    for batch, variants in r.get("infer", {}).items():
        plain = variants["plain timm"]
        unit = "latency" if batch == "1" else "throughput"
        for name, v in variants.items():
            if name == "plain timm":
                continue
            value = (
                f"{1000 * v['s']:.1f} ms vs {1000 * plain['s']:.1f} ms"
                if batch == "1"
                else f"{v['img_per_s']:.1f} vs {plain['img_per_s']:.1f} img/s"
            )
            target = "1.00 +- 0.03" if name == "ICA merged" else ""
            rows.append(
                (f"inference {unit}, batch {batch}: {name} vs plain timm", value, f"{plain['s'] / v['s']:.3f}", target)
            )
    if "e2e" in r:
        e = r["e2e"]
        for workers, files in e["files_img_per_s"].items():
            rows.append(
                (
                    f"embedding {e['images']} JPEGs, {workers} DataLoader workers, vs the model on tensors",
                    f"{files:.1f} vs {e['tensors_img_per_s']:.1f} img/s (decode+transform "
                    f"{e['decode_transform_ms_per_img_one_core']:.1f} ms/img on one core)",
                    f"{files / e['tensors_img_per_s']:.2f}",
                    ">= 0.90",
                )
            )
    recall = r.get("recall", [])
    for row in recall:
        base = recall[0]
        rows.append(
            (
                f"Recall@K + MAP@R, N = {row['n']:,}, D = {row['dim']}",
                f"{row['seconds']:.1f} s, peak +{row['peak_mib']:.0f} MiB",
                f"time x{row['seconds'] / base['seconds']:.1f}, memory x{row['peak_mib'] / base['peak_mib']:.2f}",
                f"N^2: x{(row['n'] / base['n']) ** 2:.2f}, N: x{row['n'] / base['n']:.2f}",
            )
        )
    for s in r.get("search", []):
        for mode in ("batch", "single"):
            qps = s[f"{mode}_qps"]
            what = f"{s[f'{mode}_queries']} queries at once" if mode == "batch" else "one query at a time"
            rows.append(
                (
                    f"search {s['index']} N = {s['n']:,}, k = 10, {what}: Searcher vs raw FAISS",
                    f"{qps['dva']:.0f} vs {qps['faiss']:.0f} queries/s",
                    f"{qps['dva'] / qps['faiss']:.2f}",
                    ">= 0.90",
                )
            )
    m = r["machine"]
    head = (
        f"{r['model']} (random weights), {r['img_size']}px, {r['device']}, precision {r['precision']}; "
        f"{m.get('gpu') or m.get('cpu', '?')}, {m['cpus']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average {m['load_average'][0]:.2f} before, {m['load_average_after'][0]:.2f} after"
    )
    lines = [head, "", "| measurement | result | ratio | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
