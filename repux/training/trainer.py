"""Training and fine-tuning of RepUX-Net with MONAI.

* data: :mod:`repux.training.transforms` (inference preprocessing, cached, then
  the official random crops/augmentations), one case per iteration with
  ``batch_size`` positive/negative crops (official: 2);
* loss ``DiceCELoss(softmax, one-hot)``, AdamW, linear warm-up then cosine
  decay, gradient accumulation, AMP on GPU;
* the large kernels train through ``W * BFM`` (:mod:`repux.nn.bfr`); the
  exported model is folded (deploy form);
* validation: sliding-window Dice per organ (MONAI ``DiceMetric``) every
  ``val_interval`` iterations; the best model (mean Dice) is exported;
* resumable checkpoints (atomic) every ``checkpoint_interval`` iterations and
  on cancellation (SIGTERM); ``resume=True`` continues exactly: crops and
  augmentations are seeded from ``(seed, iteration)``, so an interrupted and
  resumed run computes the same updates as an uninterrupted one;
* distributed data parallel when launched by ``torchrun`` (gloo on CPU, NCCL
  on GPU): rank 0 validates, checkpoints, exports and reports progress.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from repux.config import GUIDANCE_SIGMA_MM, Guidance, Preprocessing, parse_roi_size
from repux.device import autocast_dtype, precision_name, resolve_device, set_threads
from repux.errors import Cancelled, CheckpointError, ConfigError, DatasetError
from repux.labels import Label, LabelSet
from repux.models.folder import ModelCard, save_model
from repux.progress import CancelToken, ProgressCallback, ProgressTracker
from repux.training.checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from repux.training.distributed import Distributed, ranks_agree
from repux.training.transforms import AUGMENTATIONS, CLICK_RAS_KEY, CLICKS_KEY, CROP_SAMPLING, click_indices, deterministic_transforms, random_transforms

__all__ = ["KERNEL_MODES", "TrainConfig", "TrainResult", "adapt_output_head", "parse_duration", "plan_labels", "train"]

logger = logging.getLogger(__name__)

KERNEL_MODES = ("bfr", "plain")

#: the lock file of a run folder
RUN_LOCK = "run.lock"


def parse_duration(text: str | float | None) -> float | None:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1.5h"`` -> seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1], None)
    try:
        value = float(s[:-1]) * unit if unit else float(s)
    except ValueError as err:
        raise ConfigError(f"--time-budget must look like 900, 90s, 15m or 1.5h; got {text!r}.") from err
    if value <= 0:
        raise ConfigError(f"--time-budget must be positive; got {text!r}.")
    return value


@dataclass
class TrainConfig:
    """Training settings (stored in checkpoints and in the exported model's provenance)."""

    preset: str = "tiny"
    model_args: dict[str, Any] = field(default_factory=dict)
    roi_size: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 2
    max_iterations: int = 1000
    time_budget_s: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_iterations: int = 50
    val_interval: int = 100
    val_fraction: float = 0.2
    val_overlap: float = 0.25
    grad_accumulation: int = 1
    precision: str = "auto"
    seed: int = 0
    cache: str = "memory"
    checkpoint_interval: int = 50
    freeze_encoder_iterations: int = 0
    head_lr_scale: float = 1.0
    augmentation: str = "standard"
    gradient_checkpointing: bool = False
    algorithm: str = "auto"
    kernel_mode: str = "bfr"
    channels_last: bool = False
    crop_sampling: str = "posneg"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    #: train click-guidance channels with simulated clicks (DeepEdit): clicks on about half of the iterations
    interactive: bool = False
    interactive_probability: float = 0.5
    max_clicks: int = 10
    guidance_sigma_mm: float = GUIDANCE_SIGMA_MM

    def __post_init__(self) -> None:
        self.roi_size = parse_roi_size(self.roi_size)
        if isinstance(self.preprocessing, Mapping):
            self.preprocessing = Preprocessing.from_dict(self.preprocessing)
        for name in ("batch_size", "max_iterations", "val_interval", "grad_accumulation", "checkpoint_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; got {v!r}.")
        if self.warmup_iterations < 0 or self.freeze_encoder_iterations < 0:
            raise ConfigError("warmup_iterations and freeze_encoder_iterations must be >= 0.")
        if not self.head_lr_scale > 0:
            raise ConfigError(f"head_lr_scale must be > 0; got {self.head_lr_scale!r}.")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr!r}.")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1); got {self.val_fraction!r}.")
        if self.cache not in ("memory", "disk", "none"):
            raise ConfigError(f"cache must be memory, disk or none; got {self.cache!r}.")
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {self.augmentation!r}.")
        if self.crop_sampling not in CROP_SAMPLING:
            raise ConfigError(f"crop_sampling must be one of {', '.join(CROP_SAMPLING)}; got {self.crop_sampling!r}.")
        if not 0.0 <= self.interactive_probability <= 1.0:
            raise ConfigError(f"interactive_probability must be in [0, 1]; got {self.interactive_probability!r}.")
        if not isinstance(self.max_clicks, int) or not 1 <= self.max_clicks <= 100:
            raise ConfigError(f"max_clicks must be an integer from 1 to 100; got {self.max_clicks!r}.")
        if self.kernel_mode not in KERNEL_MODES:
            raise ConfigError(f"kernel_mode must be one of {', '.join(KERNEL_MODES)}; got {self.kernel_mode!r}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roi_size"] = list(self.roi_size)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    card: ModelCard | None
    iterations: int
    best_dice: dict[str, float | None]
    best_mean_dice: float | None
    history: list[dict[str, Any]]
    stopped_by: str


# --------------------------------------------------------------------------- labels
def plan_labels(base: LabelSet | None, dataset_labels: LabelSet) -> tuple[LabelSet, dict[str, int], dict[int, int]]:
    """Label set of the trained model and how the dataset's labels map onto it.

    From scratch the dataset's labels are used.  For fine-tuning, organs shared
    with the base model keep their output channel weights (matched by name,
    alias or terminology code), new organs get new channels, organs the
    dataset lacks are dropped.

    Returns:
        ``(labels, name_to_value, new_value_to_base_channel)``
    """
    if base is None:
        return dataset_labels, {lab.name: lab.value for lab in dataset_labels}, {}
    keep: list[tuple[Label, Label]] = []  # (base label, dataset label)
    new: list[Label] = []
    for ds_lab in dataset_labels:
        match = base.find(ds_lab.name) or next((b for b in base if _same_code(b, ds_lab)), None)
        if match is not None:
            keep.append((match, ds_lab))
        else:
            new.append(ds_lab)
    keep.sort(key=lambda pair: pair[0].value)
    labels: list[Label] = []
    channel_map: dict[int, int] = {0: 0}
    name_to_value: dict[str, int] = {}
    for base_lab, ds_lab in keep:
        v = len(labels) + 1
        labels.append(base_lab.with_value(v))
        channel_map[v] = base_lab.value
        name_to_value[ds_lab.name] = v
    for ds_lab in new:
        v = len(labels) + 1
        labels.append(ds_lab.with_value(v))
        name_to_value[ds_lab.name] = v
    dropped = [b.name for b in base if b.value not in channel_map.values()]
    if dropped:
        logger.info("organs of the base model not in the dataset are dropped: %s", ", ".join(dropped))
    if new:
        logger.info("new organs get new output channels: %s", ", ".join(lab.name for lab in new))
    return LabelSet(labels, name=dataset_labels.name), name_to_value, channel_map


def _same_code(a: Label, b: Label) -> bool:
    return a.type is not None and b.type is not None and a.type.value == b.type.value and (a.modifier or None) == (b.modifier or None)


def adapt_output_head(model: nn.Module, channel_map: Mapping[int, int], num_classes: int, seed: int = 0) -> None:
    """Replace the 1x1x1 output conv: channel ``v`` copies base channel ``channel_map[v]``; others start fresh."""
    from monai.networks.blocks import UnetOutBlock

    old = model.out.conv.conv
    torch.manual_seed(seed)
    head = UnetOutBlock(3, old.in_channels, num_classes)
    with torch.no_grad():
        for new_c, old_c in channel_map.items():
            head.conv.conv.weight[new_c] = old.weight[old_c]
            head.conv.conv.bias[new_c] = old.bias[old_c]
    from repux.nn.fastconv import use_onednn

    model.out = use_onednn(head).to(old.weight.device)
    model.out_channels = num_classes


# --------------------------------------------------------------------------- helpers
def _lr_lambda(warmup: int, total: int):
    def f(it: int) -> float:
        if warmup and it < warmup:
            return (it + 1) / warmup
        progress = (it - warmup) / max(1, total - warmup)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _iteration_seed(seed: int, iteration: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + iteration * 7_919 + micro * 104_729 + rank * 15_485_863) % (2**31 - 1)


def _make_datasets(train_cases, val_cases, cfg: TrainConfig, labels: LabelSet, value_map: dict[int, int], run_dir: Path):
    from monai.data import CacheDataset, Dataset, PersistentDataset
    from monai.transforms import Compose

    recorded = [c.recorded_clicks() for c in train_cases] if cfg.interactive else []
    clicks = any(recorded)
    if clicks:
        logger.info(
            "%d of %d training cases carry %d recorded clicks: interactive iterations place those in the crop first, then simulated ones",
            sum(1 for r in recorded if r),
            len(train_cases),
            sum(len(r) for r in recorded),
        )
    rand = random_transforms(cfg.roi_size, cfg.batch_size, labels, cfg.augmentation, cfg.crop_sampling, clicks=clicks)
    train_items = [{"image": str(c.image), "label": str(c.label), "id": c.id} for c in train_cases]
    for item, points in zip(train_items, recorded if clicks else ()):
        item[CLICK_RAS_KEY] = points
    val_items = [{"image": str(c.image), "label": str(c.label), "id": c.id} for c in val_cases]
    train_t = Compose(deterministic_transforms(cfg.preprocessing, value_map, clicks=clicks) + rand)
    val_t = Compose(deterministic_transforms(cfg.preprocessing, value_map))
    if cfg.cache == "memory":
        tr = CacheDataset(train_items, train_t, cache_rate=1.0, num_workers=1, progress=False)
        va = CacheDataset(val_items, val_t, cache_rate=1.0, num_workers=1, progress=False) if val_items else None
    elif cfg.cache == "disk":
        cache_dir = run_dir / "cache"
        tr = PersistentDataset(train_items, train_t, cache_dir=cache_dir)
        va = PersistentDataset(val_items, val_t, cache_dir=cache_dir) if val_items else None
    else:
        tr = Dataset(train_items, train_t)
        va = Dataset(val_items, val_t) if val_items else None
    return tr, va, train_t


def _validate(
    model: nn.Module, val_ds, labels: LabelSet, cfg: TrainConfig, device: torch.device, amp: torch.dtype | None, cancel: CancelToken | None
) -> dict[str, float | None]:
    from monai.metrics import DiceMetric

    net = _unwrap(model)
    was_training = net.training
    net.eval()
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    rows = []
    try:
        rows = _validation_rows(net, val_ds, labels, cfg, device, amp, cancel, metric)
    finally:
        if was_training:
            net.train()
    if not rows:
        return {}
    table = torch.stack(rows)  # (cases, organs), NaN where the organ is absent
    out: dict[str, float | None] = {}
    for j, lab in enumerate(labels):
        col = table[:, j]
        col = col[~torch.isnan(col)]
        out[lab.name] = round(float(col.mean()), 4) if len(col) else None
    return out


def _validation_rows(net, val_ds, labels: LabelSet, cfg: TrainConfig, device: torch.device, amp, cancel: CancelToken | None, metric) -> list:
    from monai.inferers import sliding_window_inference
    from monai.networks.utils import one_hot

    rows = []
    with torch.inference_mode():
        for i in range(len(val_ds)):
            if cancel is not None:
                cancel.check()
            item = val_ds[i]
            x = torch.as_tensor(item["image"])[None].to(device)
            y = torch.as_tensor(item["label"])[None].long()

            def predict(b: torch.Tensor) -> torch.Tensor:
                if cancel is not None:
                    cancel.check()  # per window: a stop never waits for a whole validation pass
                extra = _unwrap(net).in_channels - b.shape[1]
                if extra > 0:  # a guidance model is validated without clicks: the automatic quality
                    b = torch.cat([b, b.new_zeros((b.shape[0], extra, *b.shape[2:]))], 1)
                if amp is not None:
                    with torch.autocast(device_type=device.type, dtype=amp):
                        return net(b).float()
                return net(b)

            logits = sliding_window_inference(x, cfg.roi_size, 1, predict, overlap=cfg.val_overlap, mode="gaussian")
            pred = logits.argmax(1, keepdim=True).cpu()
            n = labels.num_classes
            rows.append(metric(one_hot(pred, n), one_hot(y, n))[0])
    return rows


def _mean(d: Mapping[str, float | None]) -> float | None:
    vals = [v for v in d.values() if v is not None]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- train
def train(
    dataset,
    out: str | Path | None,
    config: TrainConfig,
    *,
    run_dir: str | Path,
    base_model: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    threads: int | None = None,
    model: nn.Module | None = None,
    model_id: str | None = None,
    model_name: str = "",
    description: str = "",
    command: str | None = None,
    overwrite: bool = False,
    weights_dtype: str = "float32",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train (or fine-tune, with ``base_model``) and export the best model folder to ``out``.

    Args:
        dataset: a :class:`repux.data.datasets.Dataset`.
        out: model folder to write (deploy form); None to skip the export.
        config: :class:`TrainConfig`.
        run_dir: folder for the resumable checkpoint, the progress log and caches.
        base_model: model folder/id to fine-tune from (deploy weights are un-folded exactly).
        resume: continue from ``run_dir/checkpoint.pt``.
        model: a pre-built network (ablations); overrides preset/base.
        progress: receives per-iteration events (``iteration``, ``loss``, ``lr``, ``val_dice``...).
        cancel: cancellation token; a checkpoint is written before :class:`Cancelled` propagates.

    The run folder is locked for the whole run (:class:`repux.io.locks.FileLock` on
    ``run_dir/run.lock``): a second process on the same folder gets a one-line
    error naming the PID that holds it; a lock left by a killed process is taken over.

    Raises:
        DatasetError, ConfigError, CheckpointError, Cancelled, LockedError.
    """
    lock = lock_run_dir(run_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        out_path = Path(out) if out is not None else None
        if out_path is not None and out_path.exists() and not overwrite and int(os.environ.get("RANK", "0")) == 0:
            raise ConfigError(f"output model folder {str(out_path)!r} already exists; choose another --output (models are never overwritten).")
        r = _setup(
            dataset,
            config,
            run_dir=run_dir,
            base_model=base_model,
            resume=resume,
            device=device,
            threads=threads,
            model=model,
            progress=progress,
            cancel=cancel,
        )
        stopped_by = _loop(r)
        weights_agree = None
        if r.dist.enabled:
            r.dist.sync_buffers(r.net)
            weights_agree = ranks_agree(r.net)
            if not weights_agree:
                raise RuntimeError("distributed ranks ended with different weights; this is a bug, please report it.")
            logger.info("all %d ranks agree on the final weights", r.dist.world)
        card = None
        if r.dist.main and out_path is not None:
            card = _export(
                r, out_path, stopped_by, weights_agree, model_id=model_id, model_name=model_name, description=description, command=command,
                overwrite=overwrite, weights_dtype=weights_dtype,
            )  # fmt: skip
        r.dist.close()
        return TrainResult(card, r.iteration, r.best["dice"], r.best["mean"], r.history, stopped_by)
    finally:
        if lock is not None:
            lock.release()


def lock_run_dir(run_dir: str | Path):
    """Take the lock of a run folder (rank 0 only); raises :class:`repux.io.locks.LockedError` when a live process holds it."""
    from repux.errors import OutputError
    from repux.io.files import os_error_message
    from repux.io.locks import FileLock

    run = Path(run_dir)
    try:
        lock = FileLock(run / RUN_LOCK, f"run folder {str(run)!r}").acquire()
    except OSError as err:
        raise OutputError(f"--run-dir: {os_error_message(run, err)}") from err
    for stale in run.glob(".*.tmp*"):  # temporary files of a killed run (we hold the folder now)
        try:
            stale.unlink()
        except OSError:
            pass
    return lock


@dataclass
class _Run:
    """One training run: what setup prepared and the state the loop updates (``step``, ``validate``, ``checkpoint``, ``export``)."""

    cfg: TrainConfig
    run: Path
    dev: torch.device
    dist: Distributed
    dataset: Any
    labels: LabelSet
    train_cases: list
    val_cases: list
    fingerprint: str
    train_ds: Any
    val_ds: Any
    train_transform: Any
    net: nn.Module
    ddp_net: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    loss_fn: Any
    amp: torch.dtype | None
    memory_format: torch.memory_format
    tracker: ProgressTracker
    progress: ProgressCallback | None
    cancel: CancelToken | None
    base_card: ModelCard | None = None
    guidance: Guidance | None = None
    iteration: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"mean": None, "dice": {}, "state": None, "iteration": 0})
    history: list[dict[str, Any]] = field(default_factory=list)
    t_start: float = 0.0
    #: the validation due at this iteration has not run yet (stopped before or during it)
    val_pending: bool = False
    encoder_frozen: bool | None = None

    @property
    def ckpt_path(self) -> Path:
        return self.run / CHECKPOINT

    # ------------------------------------------------------------------ reporting
    def emit(self, stage: str, iteration: int, **extra: Any) -> None:
        """Record an event in the history and report it (the tracker raises :class:`Cancelled` after a stop request)."""
        cfg = self.cfg
        elapsed = time.monotonic() - self.t_start
        frac_it = iteration / cfg.max_iterations
        frac_t = elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0
        event = {"iteration": iteration, "max_iterations": cfg.max_iterations, "elapsed_s": round(elapsed, 1), **extra}
        if self.dist.main:
            self.history.append({"stage": stage, **event})
        if self.progress is not None or self.cancel is not None:
            self.tracker.update("train", max(frac_it, frac_t), _message(stage, iteration, cfg.max_iterations, extra), **event)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> None:
        """Write the resumable checkpoint (rank 0; atomic, verified)."""
        if not self.dist.main:
            return
        net = self.net
        save_checkpoint(
            {
                "format": "repux-train-checkpoint",
                "iteration": self.iteration,
                "model": net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rng_state(),
                "best": {"mean": self.best["mean"], "dice": self.best["dice"], "iteration": self.best["iteration"]},
                "best_model": self.best["state"],
                "labels": self.labels.to_list(),
                "model_args": net.config(),
                "config": self.cfg.to_dict(),
                "history": self.history,
                "elapsed_s": time.monotonic() - self.t_start,
                "validation_pending": self.val_pending,
            },
            self.ckpt_path,
        )

    def restore(self) -> None:
        """Continue from the run folder's checkpoint (same organs and network required)."""
        ckpt_path, labels, net = self.ckpt_path, self.labels, self.net
        state = load_checkpoint(ckpt_path)
        if state.get("labels") != labels.to_list():
            was = ", ".join(str(d.get("name")) for d in state.get("labels") or [] if isinstance(d, dict))
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written for the organs [{was}], not [{', '.join(labels.names)}] of this dataset/model; "
                "start a new run folder (--run-dir) instead of --resume."
            )
        if state.get("model_args") != net.config():
            diff = sorted(k for k in set(state.get("model_args") or {}) | set(net.config()) if (state.get("model_args") or {}).get(k) != net.config().get(k))
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written for another network (differs in {', '.join(diff)}); start a new run folder (--run-dir) instead of --resume."
            )
        net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        b = state["best"]
        self.best = {"mean": b["mean"], "dice": b["dice"], "state": state.get("best_model"), "iteration": b["iteration"]}
        self.history = list(state.get("history", []))
        self.t_start = time.monotonic() - float(state.get("elapsed_s", 0.0))
        self.val_pending = bool(state.get("validation_pending", False)) and self.val_ds is not None
        logger.info("resumed from %s at iteration %d", ckpt_path, self.iteration)

    # ------------------------------------------------------------------ step and validation
    def step(self) -> float:
        """One optimizer step (with gradient accumulation); returns the mean loss.  Crops are seeded by (seed, iteration, rank)."""
        cfg, net, dist, it = self.cfg, self.net, self.dist, self.iteration
        freeze = it < cfg.freeze_encoder_iterations
        if freeze != self.encoder_frozen:
            for p in net.repuxnet_3d.parameters():
                p.requires_grad_(not freeze)
            self.encoder_frozen = freeze
            if freeze:
                logger.info("encoder frozen for the first %d iterations", cfg.freeze_encoder_iterations)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        n_train = len(self.train_ds)
        for micro in range(cfg.grad_accumulation):
            s = _iteration_seed(cfg.seed, it, micro, dist.rank)
            rng = np.random.default_rng(s)
            idx = int(rng.integers(n_train))
            self.train_transform.set_random_state(seed=s)
            torch.manual_seed(s)
            crops = self.train_ds[idx]
            crops = crops if isinstance(crops, list) else [crops]
            x = torch.stack([torch.as_tensor(c["image"]) for c in crops]).to(self.dev).contiguous(memory_format=self.memory_format)
            y = torch.stack([torch.as_tensor(c["label"]) for c in crops]).to(self.dev)
            if self.guidance is not None:
                recorded = [click_indices(c[CLICKS_KEY]) for c in crops] if CLICKS_KEY in crops[0] else None
                x = torch.cat([x, self._guidance_input(x, y, rng, recorded)], 1).contiguous(memory_format=self.memory_format)
            if self.amp is not None:
                with torch.autocast(device_type=self.dev.type, dtype=self.amp):
                    loss = self.loss_fn(self.ddp_net(x).float(), y)
            else:
                loss = self.loss_fn(self.ddp_net(x), y)
            self.scaler.scale(loss / cfg.grad_accumulation).backward()
            loss_sum += float(loss.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        if cfg.time_budget_s:
            self._schedule_by_time()
        loss_value = loss_sum / cfg.grad_accumulation
        if not math.isfinite(loss_value):
            raise ConfigError(f"training diverged at iteration {self.iteration} (loss {loss_value}); lower --lr or use --precision fp32.")
        return loss_value

    def _guidance_input(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, recorded: list[list[Any]] | None = None) -> torch.Tensor:
        """Click heatmaps for one batch: none (zeros) or, with ``--interactive`` on about half of the iterations, 1 to
        ``max_clicks`` simulated clicks per crop drawn from the errors of the current prediction, in 1-3 rounds (one
        no-grad forward per round, so later clicks correct what the earlier ones left).  ``recorded``: per crop, the
        voxels of the clicks recorded with its case (:func:`~repux.training.transforms.click_indices`); they come
        first, each saying the class the corrected label gives its voxel."""
        from repux.inference.guidance import GridClick, click_heatmaps, sample_clicks, sigma_voxels

        cfg, g = self.cfg, self.guidance
        assert g is not None
        heat = np.zeros((x.shape[0], g.channels, *x.shape[2:]), np.float32)
        if not cfg.interactive or rng.random() >= cfg.interactive_probability:
            return torch.from_numpy(heat).to(x.device)
        n_clicks = int(rng.integers(1, cfg.max_clicks + 1))
        rounds = 1 + (n_clicks - 1) // 4
        sigma = sigma_voxels(g.sigma_mm, cfg.preprocessing.spacing)
        truth = y[:, 0].cpu().numpy().astype(np.uint8)
        clicks: list[list[Any]] = [[GridClick(i, int(truth[b][i])) for i in (recorded[b] if recorded else ())] for b in range(x.shape[0])]
        for b in range(x.shape[0]):
            if clicks[b]:
                heat[b] = click_heatmaps(x.shape[2:], clicks[b], g.channels, sigma)
        placed = 0
        for r in range(rounds):
            k = math.ceil((n_clicks - placed) / (rounds - r))
            with torch.no_grad():
                inp = torch.cat([x, torch.from_numpy(heat).to(x.device)], 1).contiguous(memory_format=self.memory_format)
                if self.amp is not None:
                    with torch.autocast(device_type=self.dev.type, dtype=self.amp):
                        pred = self.net(inp).argmax(1).cpu().numpy().astype(np.uint8)
                else:
                    pred = self.net(inp).argmax(1).cpu().numpy().astype(np.uint8)
            for b in range(x.shape[0]):
                clicks[b] += sample_clicks(pred[b], truth[b], k, rng)
                heat[b] = click_heatmaps(x.shape[2:], clicks[b], g.channels, sigma)
            placed += k
        return torch.from_numpy(heat).to(x.device)

    def _schedule_by_time(self) -> None:
        """With a time budget the cosine decay follows whichever ends first, the iterations or the budget.

        The schedule position is ``max(iteration, max_iterations * elapsed / budget)``, so a run stopped by its
        budget still ends at the low learning rate instead of in the middle of the decay.
        """
        cfg = self.cfg
        elapsed = time.monotonic() - self.t_start
        position = max(self.iteration, int(cfg.max_iterations * elapsed / float(cfg.time_budget_s or 1.0)))
        factor = _lr_lambda(cfg.warmup_iterations, cfg.max_iterations)(min(position, cfg.max_iterations))
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def validate(self) -> None:
        """Sliding-window Dice on the validation cases (rank 0); keeps the best weights.  Stops within one window when cancelled."""
        dist, net, it = self.dist, self.net, self.iteration
        dist.sync_buffers(net)
        if dist.main:
            dice = _validate(net, self.val_ds, self.labels, self.cfg, self.dev, self.amp, self.cancel)
            mean = _mean(dice)
            if mean is not None and (self.best["mean"] is None or mean > self.best["mean"]):
                self.best = {"mean": mean, "dice": dice, "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, "iteration": it}
            self.val_pending = False
            self.emit("validate", it, val_dice=dice, val_mean_dice=None if mean is None else round(mean, 4), best_mean_dice=self.best["mean"])
        self.val_pending = False
        dist.barrier()

    def stop_cancelled(self) -> None:
        """Write the checkpoint and raise :class:`Cancelled` (the run can be resumed)."""
        self.checkpoint()
        self.dist.close()
        logger.warning("training stopped at iteration %d; resume with --resume (checkpoint %s)", self.iteration, self.ckpt_path)
        raise Cancelled(f"training cancelled at iteration {self.iteration}; checkpoint saved to {self.ckpt_path}")


def _plan_guidance(net: nn.Module, cfg: TrainConfig, labels: LabelSet, base_card: ModelCard | None) -> Guidance | None:
    """The click channels of the trained network: the base model's, or (``--interactive``) new zero-weight ones."""
    from repux.nn.guidance import add_guidance_channels

    if base_card is not None and base_card.guidance is not None:
        if list(base_card.guidance.labels) != ["background", *labels.names]:
            raise ConfigError(
                f"the base model {base_card.id!r} has click guidance for {list(base_card.guidance.labels)[1:]}; fine-tuning it with other organs "
                f"({labels.names}) is not supported: fine-tune its automatic parent, then add guidance with --interactive."
            )
        return base_card.guidance
    if not cfg.interactive:
        return None
    guidance = Guidance.for_labels(labels.names, cfg.guidance_sigma_mm)
    add_guidance_channels(net, guidance.channels)  # zero weights: without clicks the network is the automatic one
    logger.info(
        "interactive training: %d click-guidance channels (sigma %.1f mm), clicks on %.0f %% of the iterations (1-%d per crop)",
        guidance.channels, guidance.sigma_mm, 100 * cfg.interactive_probability, cfg.max_clicks,
    )  # fmt: skip
    return guidance


def _setup(
    dataset,
    config: TrainConfig,
    *,
    run_dir: str | Path,
    base_model: str | Path | None,
    resume: bool,
    device: str,
    threads: int | None,
    model: nn.Module | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> _Run:
    """Device, process group, labels, data, network, optimizer; restores the checkpoint when resuming."""
    from monai.losses import DiceCELoss

    cfg = config
    run = Path(run_dir)
    dev, dist = _setup_device(device, threads)
    if not dist.main:
        progress = None
    base_card, base_net = None, None
    if base_model is not None and model is None:
        base_card, base_net = _load_base(base_model, cfg.algorithm)
        cfg = replace(cfg, preprocessing=base_card.preprocessing)
    labels, name_to_value, channel_map = plan_labels(base_card.labels if base_card else None, dataset.labels)
    train_cases, val_cases, fingerprint = _plan_cases(dataset, cfg)
    run.mkdir(parents=True, exist_ok=True)

    tracker = ProgressTracker(progress, {"prepare": 3.0, "train": 94.0, "export": 3.0}, cancel)
    tracker.update("prepare", 0.0, f"caching {len(train_cases)} training and {len(val_cases)} validation cases")
    torch.manual_seed(cfg.seed)
    file_values = dataset.label_values or {lab.name: lab.value for lab in dataset.labels}
    value_map = {int(file_values[name]): int(v) for name, v in name_to_value.items()}
    train_ds, val_ds, train_transform = _make_datasets(train_cases, val_cases, cfg, labels, value_map, run)
    tracker.update("prepare", 1.0, "data ready")

    net = _build_network(cfg, labels, model, base_net, channel_map)
    guidance = _plan_guidance(net, cfg, labels, base_card)
    net.set_gradient_checkpointing(cfg.gradient_checkpointing)
    net = net.to(dev).train()
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        net = net.to(memory_format=memory_format)
    amp = autocast_dtype(dev, cfg.precision)
    logger.info("training on %s in %s (--precision %s; master weights float32)", dev, precision_name(amp), cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16 and dev.type == "cuda")
    ddp_net: nn.Module = net
    if dist.enabled:
        ddp_net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer, scheduler = _build_optimizer(net, cfg)

    r = _Run(
        cfg=cfg, run=run, dev=dev, dist=dist, dataset=dataset, labels=labels, train_cases=train_cases, val_cases=val_cases, fingerprint=fingerprint,
        train_ds=train_ds, val_ds=val_ds, train_transform=train_transform, net=net, ddp_net=ddp_net, optimizer=optimizer, scheduler=scheduler,
        scaler=scaler, loss_fn=DiceCELoss(to_onehot_y=True, softmax=True), amp=amp, memory_format=memory_format, tracker=tracker, progress=progress,
        cancel=cancel, base_card=base_card, guidance=guidance,
    )  # fmt: skip
    if not resume and r.ckpt_path.is_file() and dist.main:
        logger.warning("starting a new run in %s: its earlier checkpoint will be replaced (use --resume to continue it instead)", run)
    r.t_start = time.monotonic()
    if resume:
        r.restore()
    return r


def _setup_device(device: str, threads: int | None) -> tuple[torch.device, Distributed]:
    """The training device and the process group (torchrun's environment; one CUDA device per local rank)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        set_threads(threads)
    dist = Distributed(dev.type)
    if dist.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    return dev, dist


def _load_base(base_model: str | Path, algorithm: str) -> tuple[ModelCard, nn.Module]:
    """The fine-tuning base: its card and its (deploy-form) network."""
    from repux.models.folder import load_model
    from repux.models.store import resolve_model

    base_net, base_card = load_model(resolve_model(base_model).path, device="cpu", algorithm=algorithm)
    return base_card, base_net


def _plan_cases(dataset, cfg: TrainConfig) -> tuple[list, list, str]:
    """Training and validation cases (the test split is never used) and the dataset's fingerprint; files must exist."""
    from repux.data.datasets import dataset_fingerprint, split_cases

    cases = [c for c in dataset.cases if c.split != "test"]
    if not cases:
        raise DatasetError("the dataset has no training cases.")
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed)
    if not train_cases:
        raise DatasetError(f"no training cases left after the validation split ({len(val_cases)} validation cases); lower --val-fraction.")
    missing = [str(p) for c in cases for p in (c.image, c.label) if not Path(p).exists()]
    if missing:
        raise DatasetError(f"{len(missing)} dataset file(s) are missing, e.g. {missing[0]}; run 'repux dataset check'.")
    return train_cases, val_cases, dataset_fingerprint(cases, dataset.labels)


def _build_network(cfg: TrainConfig, labels: LabelSet, model: nn.Module | None, base_net: nn.Module | None, channel_map: Mapping[int, int]) -> nn.Module:
    """The network to train: the caller's, the base un-folded (W = W_eff / BFM, exact) with its head adapted, or a new one."""
    from repux.nn import create_model

    if model is not None:
        net = model
    elif base_net is not None:
        net = base_net
        if cfg.kernel_mode == "bfr":
            net.unreparameterize()
        net.train()
        adapt_output_head(net, channel_map, labels.num_classes, seed=cfg.seed)
    else:
        net = create_model(
            cfg.preset, in_channels=1, out_channels=labels.num_classes, deploy=cfg.kernel_mode == "plain", algorithm=cfg.algorithm, **cfg.model_args
        )
    if net.out_channels != labels.num_classes:
        raise ConfigError(f"the network has {net.out_channels} outputs but the label set needs {labels.num_classes}.")
    return net


def _build_optimizer(net: nn.Module, cfg: TrainConfig) -> tuple[Any, Any]:
    """AdamW (the 1x1x1 output head at ``head_lr_scale``: a new organ's channel starts from nothing) and warm-up + cosine."""
    head_params = [p for n, p in net.named_parameters() if n.startswith("out.")]
    body_params = [p for n, p in net.named_parameters() if not n.startswith("out.")]
    optimizer = torch.optim.AdamW(
        [{"params": body_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_scale}], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_iterations, cfg.max_iterations))


def _loop(r: _Run) -> str:
    """Iterate until max_iterations, the time budget or a stop request; returns what stopped it (raises Cancelled after checkpointing)."""
    cfg, dist, cancel = r.cfg, r.dist, r.cancel
    stopped_by = "max_iterations"
    try:
        if r.val_pending:  # resumed from a stop during (or just before) a validation: run it first
            r.validate()
        while r.iteration < cfg.max_iterations:
            elapsed = time.monotonic() - r.t_start
            over_budget = cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s
            cancelled = cancel is not None and cancel.cancelled
            if dist.any(over_budget or cancelled):
                stopped_by = "cancelled" if dist.any(cancelled) else "time_budget"
                break
            loss_value = r.step()
            it = r.iteration
            r.val_pending = r.val_ds is not None and (it % cfg.val_interval == 0 or it == cfg.max_iterations)
            r.emit("train", it, loss=round(loss_value, 5), lr=float(r.scheduler.get_last_lr()[0]))
            if r.val_pending:
                r.validate()
            if it % cfg.checkpoint_interval == 0 or it == cfg.max_iterations:
                r.checkpoint()
    except Cancelled:
        stopped_by = "cancelled"
    if stopped_by == "cancelled":
        r.stop_cancelled()
    if stopped_by == "time_budget":
        logger.info("time budget reached at iteration %d", r.iteration)
        if r.val_ds is not None and dist.main and (not r.history or r.history[-1].get("stage") != "validate"):
            r.val_pending = True
            try:
                r.validate()
            except Cancelled:
                r.stop_cancelled()
        r.checkpoint()
    return stopped_by


def _export(
    r: _Run, out_path: Path, stopped_by: str, weights_agree: bool | None, *, model_id, model_name, description, command, overwrite, weights_dtype
) -> ModelCard:
    """Save the best weights (deploy form) as a model folder with full provenance."""
    cfg, base_card, dataset, best = r.cfg, r.base_card, r.dataset, r.best
    r.tracker.update("export", 0.0, "exporting the best model")
    export = copy.deepcopy(_unwrap(r.net)).cpu().eval()
    if best["state"] is not None:
        export.load_state_dict(best["state"])
    prov: dict[str, Any] = {
        "source": "repux finetune" if base_card else "repux train",
        "dataset": {
            "name": dataset.name,
            "fingerprint": r.fingerprint,
            "train_cases": len(r.train_cases),
            "val_cases": len(r.val_cases),
            "layout": dataset.layout,
        },
        "iterations": r.iteration,
        "best_iteration": best["iteration"],
        "validation_dice": best["dice"],
        "validation_mean_dice": best["mean"],
        "train_config": cfg.to_dict(),
        "seed": cfg.seed,
        "stopped_by": stopped_by,
        "elapsed_s": round(time.monotonic() - r.t_start, 1),
        "device": str(r.dev),
    }
    if command:
        prov["command"] = command
    if base_card is not None:
        prov["base_model"] = {"id": base_card.id, "version": base_card.version, "sha256": base_card.sha256}
    if r.dist.enabled:
        prov["world_size"] = r.dist.world
        prov["ranks_agree_on_weights"] = weights_agree
    card = save_model(
        export,
        out_path,
        labels=r.labels,
        preprocessing=cfg.preprocessing,
        inference=replace(base_card.inference, roi_size=cfg.roi_size) if base_card else _default_inference(cfg),
        model_id=model_id,
        name=model_name,
        description=description,
        preset=None if base_card else cfg.preset,
        provenance=prov,
        overwrite=overwrite,
        weights_dtype=weights_dtype,
        guidance=r.guidance,
    )
    r.tracker.done(
        f"saved {card.id}", iteration=r.iteration, max_iterations=cfg.max_iterations, model=str(card.path), best_mean_dice=best["mean"], val_dice=best["dice"]
    )
    return card


def _default_inference(cfg: TrainConfig):
    from repux.config import InferenceSettings

    return InferenceSettings(roi_size=cfg.roi_size)


def _message(stage: str, it: int, total: int, extra: Mapping[str, Any]) -> str:
    if stage == "validate":
        return f"iteration {it}/{total}: validation mean Dice {extra.get('val_mean_dice')}"
    return f"iteration {it}/{total}: loss {extra.get('loss', float('nan')):.4f}"
