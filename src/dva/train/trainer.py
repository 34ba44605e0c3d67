"""The training loop shared by every method (docs/method.md section 5).

One step: the batch's original images and object views go through the model in one forward
pass, the DPT loss (or plain Proxy-Anchor without views) is computed, and only the trainable
parameters (adapters or unfrozen weights) and the proxies are updated, each with its own
learning rate. After every epoch the trained weights and an exact resume point are written
atomically to the run directory; a validation side (classes carved from training, never the
test split) is evaluated and logged when configured.

Under ``torchrun`` every rank trains on its share of each global batch, the embeddings of the
whole batch are gathered for the loss (see :mod:`dva.distributed`), and rank 0 alone writes
the run directory; a distributed step computes what a single-process step computes.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dva._io import append_jsonl, atomic_write_json
from dva._version import __version__
from dva.checkpoint import save_tensors
from dva.config import RunConfig, TrainConfig, TrainingRecord, read_run_file, resumable_fields
from dva.data import DataSplit, data_fingerprint, load_catalog, split_from_config
from dva.data.loaders import TrainBatch, TrainBatchSampler, TrainDataset, ViewMaker, collate_train, original_only
from dva.data.transforms import train_transform
from dva.data.zoom import ZoomOutAugment
from dva.distributed import (
    all_gather_objects,
    all_gather_rows,
    any_rank,
    barrier,
    init_distributed,
    main_first,
    wrap_ddp,
)
from dva.errors import ConfigError, DataError, DvaError, WriteError
from dva.evaluate.evaluate import evaluate_side
from dva.losses import DPTLoss, DPTOptions, ViewEmbeddings
from dva.losses.dpt import LossOutput
from dva.models import RetrievalModel, count_parameters, create_model, get_method
from dva.models.methods import dpt_options
from dva.runs import MODEL_PREFIX, Run, check_fits, check_same_images, check_weights_metadata, weights_metadata
from dva.runtime import autocast, autocast_dtype, resolve_device, seed_everything
from dva.train.interrupt import GracefulInterrupt
from dva.train.schedule import lr_factor
from dva.train.state import Position, load_training_state, save_training_state
from dva.view_kinds import ORIGINAL, VIEW_KINDS

LOSS_PREFIX = "loss."
LOG_EVERY = 10


class TrainingInterrupted(DvaError):
    """Training stopped on request after writing a resume checkpoint."""


class Trainer:
    """Train one run. ``Trainer(config, "runs/x").fit()``; ``fit(resume=True)`` continues it.

    ``split`` and ``views`` may be given directly (notebooks, tests); by default the split is
    read from ``config.data`` and the views follow from the method. ``config`` is only read:
    what training finds out (the classes) goes to :attr:`record`, saved beside it.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        split: DataSplit | None = None,
        views: ViewMaker | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run = Run(run_dir)
        self.split = split
        self.views = views
        self.progress = progress
        self.method = get_method(config.model.method)
        self.record: TrainingRecord | None = None

    # ------------------------------------------------------------------ set-up
    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to the configured number of epochs and return the run summary."""
        self.dist, self.device = init_distributed(resolve_device(self.config.train.device))
        self._check_run_dir(resume)
        if self.split is None:
            catalog = load_catalog(self.config.data.dataset, self.config.data.root)
            self.split = split_from_config(catalog, self.config.data)
        self._record_classes()
        if resume and self.run.config_path.is_file():
            self._check_resume_config()
        barrier()  # every rank has read the run directory before rank 0 writes to it
        if self.dist.is_main:
            self.config.save(self.run.config_path, self.record)
        if self.run.finished:
            return self.run.summary()
        if not self.method.trains:
            return self._finish(RetrievalModel(torch.nn.Identity()), train_seconds=0.0, epoch_metrics={})
        self._build()
        position = self._load_resume_point() if resume else Position()
        try:
            return self._train(position)
        except WriteError as e:  # disk full, no permission: the last checkpoint is intact
            raise WriteError(f"{e}; once fixed, continue with: dva train --resume {self.run.path}") from e

    def _check_run_dir(self, resume: bool) -> None:
        if not resume and self.run.config_path.exists():
            raise ConfigError(
                f"{self.run.path} already holds a run; pass --resume to continue it, or choose another --out"
            )

    def _data(self) -> DataSplit:
        """The split being trained on: given to the constructor, or read by :meth:`fit`."""
        if self.split is None:
            raise RuntimeError("Trainer has no data split yet: fit() reads it from config.data")
        return self.split

    def _classes(self) -> TrainingRecord:
        """What :meth:`fit` recorded about the split's classes."""
        if self.record is None:
            raise RuntimeError("Trainer has no training record yet: fit() records the classes first")
        return self.record

    def _record_classes(self) -> None:
        split = self._data()
        train = split.train
        if train.num_classes < 2:
            raise DataError(f"training needs at least two classes, the {split.protocol} split has {train.num_classes}")
        self.record = TrainingRecord(list(train.class_names), train.num_classes, __version__, data_fingerprint(split))

    def _check_resume_config(self) -> None:
        """Refuse to resume with other settings than the run's, except those marked ``resumable``."""
        path = self.run.config_path
        raw = read_run_file(path)  # read once: the settings and the record are both compared
        saved = _comparable(RunConfig.from_saved(raw, where=str(path)))
        asked = _comparable(self.config)
        may_change = resumable_fields()
        changed = [k for k in sorted(set(saved) | set(asked)) if k not in may_change and saved.get(k) != asked.get(k)]
        if changed:
            details = "; ".join(f"{k}: run has {saved.get(k)!r}, asked {asked.get(k)!r}" for k in changed[:5])
            raise ConfigError(f"{path}: cannot resume with different settings ({details})")
        check_same_images(
            TrainingRecord.from_saved(raw, where=str(path)).data_fingerprint,
            lambda: self._classes().data_fingerprint,
            path=path,
            refusal=f"cannot resume on other images: the images under {self.config.data.root!r} "
            "are not the ones this run started on",
            advice="Train into a new run directory.",
        )

    def prepare(self, num_classes: int, batches_per_epoch: int | None = None) -> None:
        """Build everything a training step needs but the data: model, loss, optimizer, schedule.

        :meth:`fit` calls it; a benchmark calls it directly and times :meth:`train_step` on its
        own batches, so what it measures is the step training takes, not a copy of it.
        ``batches_per_epoch`` sets the learning-rate schedule (None: set later, from the data).
        """
        if not hasattr(self, "device"):
            self.dist, self.device = init_distributed(resolve_device(self.config.train.device))
        cfg = self.config
        seed_everything(cfg.train.seed)
        self.model = create_model(cfg.model).to(self.device)
        self.loss_fn = build_loss(cfg, num_classes, self.model.embed_dim).to(self.device)
        # What the step calls: the modules themselves, or their DDP wrappers (which keep the
        # ranks' adapters and proxies identical), compiled on request.
        self.train_model: Callable[..., torch.Tensor] = self.model
        self.train_loss: Callable[[ViewEmbeddings], LossOutput] = self.loss_fn
        self.proxy_source = self._attach_proxy_source()
        if self.dist.enabled:
            self.train_model, self.train_loss = wrap_ddp(self.model, self.device), wrap_ddp(self.loss_fn, self.device)
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = build_optimizer(self.model, self.loss_fn, cfg)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        dtype = autocast_dtype(self.device, cfg.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype is torch.float16)
        if batches_per_epoch is not None:
            self._set_schedule(batches_per_epoch)

    def _set_schedule(self, batches_per_epoch: int) -> None:
        cfg = self.config.train
        self.total_steps = cfg.epochs * batches_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * batches_per_epoch)
        dpt = dpt_options(self.config.model)
        object_first = dpt.object_first if dpt is not None else 0.0
        self.transfer_from_step = round(object_first * self.total_steps)

    def _build(self) -> None:
        cfg = self.config
        self.prepare(self._classes().num_classes)
        mean, std = self.model.normalization
        transform = train_transform(cfg.model.img_size, mean, std, cfg.data.resize_size)
        with main_first():  # rank 0 detects (and caches) boxes first, the others read its cache
            views = self.views or self._default_views()
        self.dataset = TrainDataset(
            self._data().train.records, transform, views, self.loss_fn.background_label, zoom=zoom_augment(cfg.train)
        )
        try:
            self.sampler = TrainBatchSampler(
                len(self.dataset),
                cfg.train.batch_size,
                seed=cfg.train.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        except ValueError as e:
            raise ConfigError(f"train.batch_size: {e}") from None
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_train,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,  # no worker start-up at every epoch
        )
        self._set_schedule(self.sampler.batches_per_epoch)
        self.max_failures = int(cfg.data.max_decode_errors * len(self.dataset))

    def _default_views(self) -> ViewMaker:
        if not self.method.uses_opa:
            return original_only
        from dva.opa.training import object_view_maker  # OPA is only imported when used

        return object_view_maker(self.config, self._data().train, progress=self.progress)

    # ------------------------------------------------------------------ loop
    def _train(self, position: Position) -> dict[str, Any]:
        cfg = self.config.train
        start = time.perf_counter()
        epoch_metrics: dict[str, Any] = {}
        with GracefulInterrupt() as interrupt:
            while position.epoch < cfg.epochs:
                epoch_start = time.perf_counter()
                self._train_epoch(position, interrupt)
                epoch_metrics = self._end_epoch(position, time.perf_counter() - epoch_start)
                position = Position(
                    epoch=position.epoch + 1,
                    global_step=position.global_step,
                    decode_failures=position.decode_failures,
                    events=position.events,
                    failed_images=position.failed_images,
                )
                self._save_resume(position)
        return self._finish(self.model, time.perf_counter() - start, epoch_metrics)

    def _train_epoch(self, position: Position, interrupt: GracefulInterrupt) -> None:
        self.model.train()
        self.sampler.set_epoch(position.epoch, start_batch=position.batch)
        desc = f"epoch {position.epoch + 1}/{self.config.train.epochs}"
        bar = tqdm(
            self.loader,
            desc=desc,
            unit="batch",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
            initial=position.batch,
            total=self.sampler.batches_per_epoch,
        )
        for batch in bar:
            sizes = self._count_problems(batch, position)
            if any(sum(per_rank) for per_rank in sizes.values()):
                parts = self.train_step(batch, position.global_step, sizes)
                position.epoch_loss_sum += parts["loss"]
                position.epoch_steps += 1
                if position.global_step % LOG_EVERY == 0:
                    self._log({"type": "step", "epoch": position.epoch + 1, "step": position.global_step, **parts})
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
            position.batch += 1
            position.global_step += 1
            every = self.config.train.checkpoint_every
            stop = any_rank(interrupt.requested, self.device)  # all ranks stop at the same step
            if (every and position.global_step % every == 0) or stop:
                self._save_resume(position)
            if stop:
                bar.close()
                raise TrainingInterrupted(
                    f"stopped at epoch {position.epoch + 1}, batch {position.batch}; "
                    f"continue with: dva train --resume {self.run.path}"
                )

    def train_step(self, batch: TrainBatch, step: int, sizes: dict[str, list[int]] | None = None) -> dict[str, float]:
        """One optimizer step at global step ``step`` (its learning rate); returns the loss parts and lr.

        ``sizes[kind][rank]``: images of each view kind on each rank (gathered by the loop under
        torchrun); None: this process's own batch, as in a single-process run.
        """
        if sizes is None:
            sizes = {k: [len(labels)] for k, (_, labels) in batch.views.items()}
        factor = lr_factor(step, self.total_steps, self.warmup_steps)
        self.loss_fn.transfer_on = step >= self.transfer_from_step
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base_lr * factor
        kinds = list(batch.views)
        if kinds:
            images = torch.cat([batch.views[k][0] for k in kinds]).to(self.device, non_blocking=True)
        else:  # every image of this rank failed to decode: a dummy image keeps DDP's ranks in step
            images = torch.zeros(1, 3, self.config.model.img_size, self.config.model.img_size, device=self.device)
        with autocast(self.device, self.config.train.precision):
            embeddings = self.train_model(images)
        chunks = (
            dict(zip(kinds, torch.split(embeddings, [len(batch.views[k][1]) for k in kinds]), strict=True))
            if kinds
            else {}
        )
        empty_labels = torch.zeros(0, dtype=torch.long, device=self.device)
        views = {
            k: (chunks.get(k, embeddings[:0]), batch.views[k][1].to(self.device) if k in chunks else empty_labels)
            for k in sizes
        }
        if self.dist.enabled:  # the loss of the global batch, not the mean of per-rank losses
            views = {k: (all_gather_rows(e, sizes[k]), all_gather_rows(y, sizes[k])) for k, (e, y) in views.items()}
        source = self.proxy_source
        out = self.train_loss(views) if source is None else self._semantic_proxy_loss(batch, views, source)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.total).backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward unannotated
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "loss": out.total.item(),
            **{k: v.item() for k, v in out.parts.items()},
            "lr": self.base_lrs[0] * factor,
        }

    def _attach_proxy_source(self) -> torch.nn.Module | None:
        """The method's proxy generator (VPTSP-G), attached to the loss; None for every other method."""
        if self.method.proxy_source is None:
            return None
        if self.dist.enabled:
            raise ConfigError(f"method {self.method.name!r} generates its proxies per process; train it in one process")
        options = self.method.parse_options(self.config.model.method_options)
        self.loss_fn.proxy_source = self.method.proxy_source(self.model, self.loss_fn.proxy_anchor, options)
        self.loss_fn.proxy_source.to(self.device)
        return self.loss_fn.proxy_source

    def _semantic_proxy_loss(
        self, batch: TrainBatch, views: ViewEmbeddings, proxy_source: torch.nn.Module
    ) -> LossOutput:
        """Proxy-Anchor on the original images against the proxies the method generates this step."""
        images, labels = batch.views[ORIGINAL]
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
        with autocast(self.device, self.config.train.precision):
            proxies = proxy_source(self.model, images, labels, self.loss_fn.proxy_anchor.proxies)
        loss = self.loss_fn.proxy_anchor(*views[ORIGINAL], proxies=proxies)
        return LossOutput(loss, {"proxy": loss.detach()})

    def _count_problems(self, batch: TrainBatch, position: Position) -> dict[str, list[int]]:
        """Count the global batch's decode failures and view events; return its view sizes per rank."""
        local = (batch.failures, dict(batch.events), {k: len(y) for k, (_, y) in batch.views.items()})
        ranks = all_gather_objects(local)
        failures = [message for rank_failures, _, _ in ranks for message in rank_failures]
        events: Counter[str] = Counter()
        for _, rank_events, _ in ranks:
            events.update(rank_events)
        kinds = [k for k in VIEW_KINDS if any(k in rank_sizes for _, _, rank_sizes in ranks)]
        sizes = {k: [rank_sizes.get(k, 0) for _, _, rank_sizes in ranks] for k in kinds}
        for kind, n in events.items():
            position.events[kind] = position.events.get(kind, 0) + n
        # The same bad image fails again every epoch: count it once (its message names its file).
        failures = [message for message in dict.fromkeys(failures) if message not in position.failed_images]
        if not failures:
            return sizes
        position.failed_images.extend(failures)
        position.decode_failures = len(position.failed_images)
        if self.dist.is_main:
            for message in failures:
                print(f"warning: skipped {message}", file=sys.stderr)
        if position.decode_failures > self.max_failures:
            raise DataError(
                f"{position.decode_failures} training images failed to decode, more than "
                f"data.max_decode_errors={self.config.data.max_decode_errors} of {len(self.dataset)} allows "
                f"(last: {failures[-1]})"
            )
        return sizes

    # ------------------------------------------------------------------ saving
    def _trainable_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {MODEL_PREFIX + k: v for k, v in self.model.trainable_state_dict().items()}
        tensors.update({LOSS_PREFIX + k: v.detach() for k, v in self.loss_fn.named_parameters()})
        return tensors

    def _save_resume(self, position: Position) -> None:
        if not self.dist.is_main:
            return
        save_training_state(
            self.run.resume_path,
            self._trainable_tensors(),
            self.optimizer,
            position,
            weights_metadata(self.config),
        )

    def _load_resume_point(self) -> Position:
        if not self.run.resume_path.is_file():
            return Position()
        trainable, optimizer_state, position, metadata = load_training_state(self.run.resume_path)
        check_weights_metadata(metadata, self.config, self.run.resume_path)
        check_fits(trainable, self._trainable_tensors(), self.run.resume_path, "this run's model and loss")
        with torch.no_grad():
            params = {MODEL_PREFIX + k: p for k, p in self.model.named_parameters() if p.requires_grad}
            params.update({LOSS_PREFIX + k: p for k, p in self.loss_fn.named_parameters()})
            for name, tensor in trainable.items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(optimizer_state)
        return position

    def _end_epoch(self, position: Position, seconds: float) -> dict[str, Any]:
        epoch = position.epoch + 1
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch,
            "loss": position.epoch_loss_sum / max(position.epoch_steps, 1),
            "seconds": round(seconds, 2),
            "decode_failures": position.decode_failures,
            **({"events": dict(position.events)} if position.events else {}),
        }
        val_side = self._data().val
        if val_side is not None:
            val = evaluate_side(
                self.model,
                val_side,
                img_size=self.config.model.img_size,
                resize_size=self.config.data.resize_size,
                device=self.device,
                precision=self.config.train.precision,
                num_workers=self.config.data.num_workers,
                progress=self.progress,
            )
            record["val"] = val
        if self.dist.is_main:
            tensors = self._trainable_tensors()
            metadata = weights_metadata(self.config, epoch=epoch)
            save_tensors(self.run.epoch_path(epoch), tensors, metadata)
            save_tensors(self.run.weights_path, tensors, metadata)
            self._prune_checkpoints(epoch)
            self._log(record)
        return record

    def _prune_checkpoints(self, epoch: int) -> None:
        keep = self.config.train.keep_checkpoints
        if keep:
            for old in range(1, epoch - keep + 1):
                self.run.epoch_path(old).unlink(missing_ok=True)

    def _finish(self, model: RetrievalModel, train_seconds: float, epoch_metrics: dict[str, Any]) -> dict[str, Any]:
        params = count_parameters(model) if self.method.trains else None
        summary = {
            "method": self.config.model.method,
            "epochs": self.config.train.epochs if self.method.trains else 0,
            "train_seconds": round(train_seconds, 2),
            "seconds_per_epoch": round(train_seconds / max(self.config.train.epochs, 1), 2),
            "trainable_params": params.trainable if params else 0,
            "last_epoch": epoch_metrics,
        }
        if self.method.trains:
            summary["processes"] = self.dist.world_size
        if self.dist.is_main:
            atomic_write_json(self.run.summary_path, summary)
        return summary

    def _log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            append_jsonl(self.run.metrics_path, {"time": round(time.time(), 3), **record})


def build_loss(config: RunConfig, num_classes: int, embed_dim: int) -> DPTLoss:
    """The method's objective: DPT (with its options) for OPA methods, else plain Proxy-Anchor."""
    method = get_method(config.model.method)
    dpt = dpt_options(config.model) or DPTOptions(background=False)
    return DPTLoss(
        num_classes,
        embed_dim,
        background=method.uses_opa and dpt.background,
        lambda_dist=config.train.lambda_dist,
        alpha=config.train.alpha,
        margin=config.train.margin,
        transfer=dpt.transfer,
    )


def build_optimizer(model: torch.nn.Module, loss_fn: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Two parameter groups: what the method trains (``lr``) and the proxies (``proxy_lr``)."""
    cfg = config.train
    # A method's proxy generator (VPTSP-G: class prompts, GRU) trains like the model, at ``lr``.
    source = getattr(loss_fn, "proxy_source", None)
    generator = list(source.parameters()) if source is not None else []
    in_generator = {id(p) for p in generator}
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad] + generator, "lr": cfg.lr, "name": "model"},
        {
            "params": [p for p in loss_fn.parameters() if id(p) not in in_generator],
            "lr": cfg.proxy_lr,
            "name": "proxies",
        },
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer: choose from adam, adamw, sgd, got {cfg.optimizer!r}")


def zoom_augment(cfg: TrainConfig) -> ZoomOutAugment | None:
    """The zoom-out augmentation of ``cfg`` (docs/opa.md), None when off (the paper's recipe)."""
    cfg.check()  # a config changed after it was built is checked too
    if cfg.zoom_out == 0:
        return None
    return ZoomOutAugment(cfg.zoom_out, cfg.zoom_scale)


def _comparable(config: RunConfig) -> dict[str, Any]:
    """``config`` as ``{"model.method_options.rank": 4, "train.lr": ...}``, method options in full."""
    raw = config.to_dict()
    raw["model"]["method_options"] = get_method(config.model.method).resolve_options(config.model.method_options)
    return _flatten(json.loads(json.dumps(raw)))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "detector_options":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Functional form of :class:`Trainer` for notebooks: ``dva.train(config, "runs/x")``."""
    return Trainer(config, run_dir, **kwargs).fit(resume=resume)


__all__ = ["Trainer", "TrainingInterrupted", "build_loss", "build_optimizer", "train"]
