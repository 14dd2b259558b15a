"""``fit``: train a course architecture, or a user's own, with the course's recipe and save attnviz checkpoints.

Every epoch trains on the training set, evaluates on the test set, steps the recipe's scheduler
and saves two checkpoints in attnviz's format: the best so far by test accuracy at ``out``, and
the last one at ``out`` with ``.last`` before the suffix (``ckpt.pth`` -> ``ckpt.last.pth``).
The last one also holds the optimizer, scheduler and scaler state (plain tensors and dicts, so
``torch.load(weights_only=True)`` reads it) for ``resume``.

Runs are reproducible: the model is initialised from ``seed`` and every epoch reseeds the
shuffling, the augmentation and dropout from ``(seed, epoch)``, so a resumed run draws the same
batches as an uninterrupted one. The caller's global torch RNG state is restored afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

import attnviz
from attnviz.data.specs import make_datasets
from attnviz.models import build_model
from attnviz.runtime.errors import CheckpointError, UsageError
from attnviz.train.architecture import Architecture
from attnviz.train.loop import EpochStats, evaluate, train_epoch
from attnviz.train.probe import choose_runtime
from attnviz.train.recipes import (
    check_stage_epochs,
    make_optimizer,
    make_scheduler,
    recipe_for,
    stage_for_epoch,
    stage_starts,
)
from attnviz.train.settings import Runtime, TrainSettings

logger = logging.getLogger(__name__)

PRESET = "cifar10"
TENSORBOARD_IMAGES = 8


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` produced.

    Attributes:
        best_path: Checkpoint with the best test accuracy.
        last_path: Checkpoint after the last epoch (with the state to resume from).
        record: The training record stored in both checkpoints (see :func:`fit`).
    """

    best_path: Path
    last_path: Path
    record: dict[str, Any] = field(repr=False)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per epoch: ``epoch``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, ``lr``, ..."""
        return self.record["history"]

    @property
    def best_test_acc(self) -> float:
        """Best test accuracy (percent)."""
        return self.record["best_test_acc"]

    @property
    def final_test_acc(self) -> float:
        """Test accuracy after the last epoch (percent)."""
        return self.record["final_test_acc"]


def fit(
    arch: str,
    data: str = "shapes",
    *,
    epochs: int,
    out: str | os.PathLike[str],
    batch_size: int = 128,
    lr: float = 1e-3,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    settings: TrainSettings | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    stage_epochs: Sequence[int] = (5, 20),
    seed: int = 0,
    num_workers: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    arch_args: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``arch`` on ``data`` with the course's recipe.

    ``resnet18_cbam`` uses seed 003's staged fine-tuning (:mod:`attnviz.train.recipes`), every
    other architecture Adam with ``ReduceLROnPlateau`` on the test loss (seeds 000/001).

    Args:
        arch: Registry name (``cnn``, ``se_cnn``, ``cbam_cnn``, ``densenet_se``, ``resnet18_cbam``, ``resnet_se``),
            ``timm:NAME``, ``torchvision:NAME``, or your own model as ``path/to/file.py:Class`` or
            ``package.module:Class`` (imported: it is your code). It gets the data's ``num_classes``
            when it takes that argument, else its output width must be the number of classes. The
            checkpoints store ``arch`` as given; load them with ``load_model(path, arch=arch)``.
        data: ``shapes``, ``cifar10`` or ``folder:PATH`` (see :func:`attnviz.train.make_datasets`).
        epochs: Total number of epochs (a resumed run continues up to this number).
        out: Path of the best checkpoint; the last one goes next to it (``*.last.pth``).
        batch_size: Images per batch.
        lr: Adam's learning rate (the staged recipe uses ``lr``, ``lr/10``, ``lr/100``).
        data_dir: Where CIFAR-10 lives (default ``./data``).
        device: ``cpu``, ``cuda``, ``cuda:N``; default CUDA when available.
        settings: Channels-last, autocast, loss scaling, pinned memory and non-blocking copies
            (default: all on CUDA, none elsewhere). Channels-last and autocast are first tried on
            one batch and turned off, with a one-line warning, when the model fails with them.
        tensorboard: TensorBoard log folder; ``None`` logs nothing.
        resume: A ``*.last.pth`` checkpoint of an earlier run of the same architecture and data.
        stage_epochs: Last epochs of stages 1 and 2 of the staged recipe.
        seed: Seed of the data set, the initial weights, the shuffling and the augmentation.
        num_workers: DataLoader worker processes (default: half the CPU cores, at most 4).
        train_size: Number of training images (default: the whole training set).
        test_size: Number of test images (default: the whole test set).
        weights: Local ImageNet ``resnet18`` state_dict for ``resnet18_cbam``'s backbone.
        download: Allow torchvision to download CIFAR-10.
        progress: Show progress bars and a line per epoch on stderr.
        arch_args: More arguments for the architecture (stored in the checkpoints); ``num_classes`` is the data's
            where the architecture takes it.

    Returns:
        A :class:`FitResult`. The record stored in the checkpoints holds the architecture,
        its kwargs, preset, class names, data spec and sizes, recipe and hyper-parameters, seed,
        device and runtime settings (``channels_last``, ``autocast``, ``grad_scaler``, ...;
        ``turned_off``: what the model could not train with), ``history`` (per epoch: losses,
        accuracies in percent, learning rates, seconds), ``best_test_acc``/``best_epoch``/
        ``final_test_acc`` (percent), ``epochs`` run, ``wall_time_s`` and library versions.

    Raises:
        UsageError: Bad arguments, data that cannot be found, or a checkpoint that cannot be resumed.
        ArchitectureError: Unknown architecture, code that cannot be imported or built, or a model
            whose output width is not the data's number of classes.
        CheckpointError: Unreadable ``resume`` or ``weights`` file.
    """
    _check_arguments(epochs, batch_size, lr, seed, num_workers)
    architecture = Architecture.named(arch)
    recipe = recipe_for(arch)
    stages = check_stage_epochs(stage_epochs)
    runtime = Runtime.for_device(device, settings)
    best_path, last_path = checkpoint_paths(out)
    state = _load_resume(Path(resume), arch) if resume is not None else None
    if state is not None and state["epoch"] >= epochs:
        raise UsageError(
            f"{resume} already ran {state['epoch']} epochs; pass --epochs larger than {state['epoch']} to continue"
        )
    if weights is not None and not (architecture.registry and architecture.takes("weights")):
        raise UsageError(f"--weights loads an ImageNet backbone, which {arch} has not; use it with resnet18_cbam")
    if recipe != "staged" and tuple(stage_epochs) != (5, 20):
        warnings.warn(f"stage_epochs applies only to the staged recipe of resnet18_cbam, not to {arch}", stacklevel=2)

    train_ds, test_ds, class_names = make_datasets(
        data, data_dir, train_size=train_size, test_size=test_size, seed=seed, download=download
    )
    if state is not None:
        _check_resume_matches(state, data, seed, class_names, weights)
    workers = _default_workers() if num_workers is None else num_workers
    arch_kwargs = architecture.kwargs(arch_args, len(class_names))  # stored: loading needs no flag
    run = _Run(
        arch=arch,
        arch_kwargs=arch_kwargs,
        recipe=recipe,
        stages=stages,
        runtime=runtime,
        lr=lr,
        epochs=epochs,
        best_path=best_path,
        last_path=last_path,
        class_names=class_names,
        record=_base_record(
            arch,
            arch_kwargs,
            class_names,
            data,
            train_ds,
            test_ds,
            recipe,
            stages,
            batch_size,
            lr,
            seed,
            weights,
            epochs,
        ),
    )
    best_path.parent.mkdir(parents=True, exist_ok=True)
    with _forked_rng(runtime), _Progress(progress) as bars:
        torch.manual_seed(seed)
        extra = {"weights": str(weights)} if weights is not None and state is None else {}
        kwargs = {**arch_kwargs, **extra}
        model = build_model(arch, **kwargs) if architecture.registry else architecture.build(kwargs)
        batch = _probe_batch(test_ds)
        if batch is not None:
            architecture.check_outputs(model, batch[0], class_names, data)
        if state is not None:
            model.load_state_dict(state["state_dict"])
        model = run.settle(model, batch)
        generator = torch.Generator()
        train_loader = run.runtime.loader(train_ds, batch_size, shuffle=True, generator=generator, num_workers=workers)
        test_loader = run.runtime.loader(test_ds, batch_size, num_workers=workers)
        log = _open_tensorboard(tensorboard, test_ds, state)
        try:
            run.train(model, train_loader, test_loader, generator, seed, state, log, bars)
        finally:
            if log is not None:
                log.close()
    return FitResult(best_path, last_path, run.record)


def checkpoint_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(best, last)`` checkpoint paths of ``out``: ``ckpt.pth`` -> ``ckpt.pth``, ``ckpt.last.pth``."""
    best = Path(out)
    if best.name in ("", ".", ".."):
        raise UsageError(f"--out must name a checkpoint file, got {str(out)!r}")
    return best, best.with_name(f"{best.stem}.last{best.suffix}" if best.suffix else f"{best.name}.last")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of shuffling, augmentation and dropout in 1-based ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --- one run ------------------------------------------------------------------------------


@dataclass
class _Run:
    """The fixed settings of one :func:`fit` call and the record it builds."""

    arch: str
    arch_kwargs: dict[str, Any]
    recipe: str
    stages: tuple[int, int]
    runtime: Runtime
    lr: float
    epochs: int
    best_path: Path
    last_path: Path
    class_names: list[str]
    record: dict[str, Any]

    def settle(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor] | None) -> nn.Module:
        """Keep the runtime's channels-last and autocast only if ``model`` trains with them on ``batch``;
        record the runtime; return the model on the device in the runtime's memory format."""
        if batch is not None:
            self.runtime, notice = choose_runtime(model, self.runtime, *batch)
            if notice is not None:
                self.record["turned_off"] = notice
                warnings.warn(notice, stacklevel=3)
        self.record.update(self.runtime.describe())
        if self.runtime.device.type == "cuda":
            self.record["device_name"] = torch.cuda.get_device_name(self.runtime.device)
        return self.runtime.prepare(model)

    def train(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        test_loader: DataLoader,
        generator: torch.Generator,
        seed: int,
        state: dict[str, Any] | None,
        log: Any,
        bars: _Progress,
    ) -> None:
        start = 1 if state is None else state["epoch"] + 1
        history: list[dict[str, Any]] = [] if state is None else list(state["record"].get("history", []))
        best_acc, best_epoch, elapsed = self._resumed_best(state)
        scaler = self.runtime.scaler()
        optimizer = make_optimizer(model, self.recipe, start, self.lr, self.stages)
        scheduler = make_scheduler(self.recipe, optimizer)
        if state is not None:
            self._restore(state["train_state"], start, optimizer, scheduler, scaler)
            self.record["resumed_from"] = state["path"]
            self.record["weights"] = state["record"].get("weights", self.record["weights"])
        for epoch in range(start, self.epochs + 1):
            began = time.perf_counter()
            new_stage = epoch != start and stage_starts(epoch, self.recipe, self.stages)
            if new_stage:
                optimizer = make_optimizer(model, self.recipe, epoch, self.lr, self.stages)
            if self.recipe == "staged" and (new_stage or epoch == start):
                bars.line(f"stage {stage_for_epoch(epoch, self.stages)}: training {_group_summary(optimizer)}")
            lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}
            torch.manual_seed(epoch_seed(seed, epoch))
            generator.manual_seed(epoch_seed(seed, epoch))
            steps = len(train_loader)

            def on_batch(index: int, loss: float, epoch: int = epoch, steps: int = steps) -> None:
                bars.advance(loss)
                if log is not None:
                    log.log_iteration((epoch - 1) * steps + index + 1, loss)

            bars.start(f"epoch {epoch}/{self.epochs} train", steps)
            train = train_epoch(model, train_loader, optimizer, self.runtime, scaler, on_batch=on_batch)
            bars.start(f"epoch {epoch}/{self.epochs} test", len(test_loader))
            test = evaluate(model, test_loader, self.runtime, on_batch=lambda i, loss: bars.advance(loss))
            if scheduler is not None:
                scheduler.step(test.loss)
            elapsed += time.perf_counter() - began
            entry = self._entry(epoch, train, test, lrs, time.perf_counter() - began)
            history.append(entry)
            if log is not None:
                log.log_epoch(epoch, entry, lrs)
                log.log_attention(model, epoch, self.class_names)
                log.flush()
            improved = test.acc > best_acc
            if improved:
                best_acc, best_epoch = test.acc, epoch
            self._update_record(history, best_acc, best_epoch, elapsed)
            if improved:
                _write(self.best_path, model, self, dict(self.record, checkpoint="best"))
            train_state = _train_state(epoch, optimizer, scheduler, scaler, best_acc, best_epoch, elapsed)
            _write(self.last_path, model, self, dict(self.record, checkpoint="last"), train_state)
            bars.line(_epoch_line(entry, self.epochs, improved))

    def _resumed_best(self, state: dict[str, Any] | None) -> tuple[float, int, float]:
        if state is None:
            return -math.inf, 0, 0.0
        saved = state["train_state"]
        if not self.best_path.is_file():
            warnings.warn(
                f"{self.best_path} does not exist; the best checkpoint restarts from the resumed epochs", stacklevel=3
            )
            return -math.inf, 0, float(saved["wall_time_s"])
        return float(saved["best_acc"]), int(saved["best_epoch"]), float(saved["wall_time_s"])

    def _restore(
        self,
        saved: dict[str, Any],
        start: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
    ) -> None:
        if self.recipe == "plateau" or not stage_starts(start, self.recipe, self.stages):
            optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])

    def _entry(
        self, epoch: int, train: EpochStats, test: EpochStats, lrs: dict[str, float], seconds: float
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train.loss,
            "train_acc": train.acc,
            "test_loss": test.loss,
            "test_acc": test.acc,
            "lr": max(lrs.values()),
            "seconds": round(seconds, 3),
        }
        if self.recipe == "staged":
            entry["stage"] = stage_for_epoch(epoch, self.stages)
            entry["lrs"] = dict(lrs)
        return entry

    def _update_record(self, history: list[dict[str, Any]], best_acc: float, best_epoch: int, elapsed: float) -> None:
        self.record.update(
            epochs=history[-1]["epoch"],
            history=list(history),
            best_test_acc=best_acc,
            best_epoch=best_epoch,
            final_test_acc=history[-1]["test_acc"],
            final_test_loss=history[-1]["test_loss"],
            wall_time_s=round(elapsed, 3),
        )


def _check_resume_matches(state: dict[str, Any], data: str, seed: int, class_names: list[str], weights: Any) -> None:
    """Refuse other classes; warn when the data spec or seed differ from the resumed run's."""
    saved = state["record"]
    if state["class_names"] != class_names:
        raise UsageError(f"{state['path']} was trained on other classes than {data!r}; resume with the same --data")
    for name, value in (("data", data), ("seed", seed)):
        if name in saved and saved[name] != value:
            warnings.warn(f"resuming a run trained with {name}={saved[name]!r} with {name}={value!r}", stacklevel=3)
    if weights is not None:
        warnings.warn("--weights is ignored when resuming: the weights come from the checkpoint", stacklevel=3)


def _check_arguments(epochs: int, batch_size: int, lr: float, seed: int, num_workers: int | None) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be an integer >= 0, got {seed!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise UsageError(f"num_workers must be an integer >= 0, got {num_workers!r}")


def _default_workers() -> int:
    return min(4, (os.cpu_count() or 1) // 2)


def _base_record(
    arch: str,
    arch_kwargs: dict[str, Any],
    class_names: list[str],
    data: str,
    train_ds: Dataset,
    test_ds: Dataset,
    recipe: str,
    stages: tuple[int, int],
    batch_size: int,
    lr: float,
    seed: int,
    weights: Any,
    epochs: int,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "preset": PRESET,
        "class_names": list(class_names),
        "data": data,
        "train_size": len(train_ds),  # type: ignore[arg-type]
        "test_size": len(test_ds),  # type: ignore[arg-type]
        "recipe": recipe,
        "optimizer": "Adam",
        "lr": lr,
        "batch_size": batch_size,
        "epochs_planned": epochs,
        "seed": seed,
        "weights": None if weights is None else str(weights),
    }
    if recipe == "staged":
        record["stage_epochs"] = list(stages)
    else:
        record["scheduler"] = "ReduceLROnPlateau(mode=min, patience=3, factor=0.5) on test loss"
    # str(): torch.__version__ is a str subclass that weights_only loading refuses.
    record.update(
        torch_version=str(torch.__version__),
        torchvision_version=str(torchvision.__version__),
        attnviz_version=str(attnviz.__version__),
    )
    return record


def _train_state(
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    best_acc: float,
    best_epoch: int,
    elapsed: float,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "wall_time_s": elapsed,
    }


# --- checkpoint files -------------------------------------------------------------------


def _write(
    path: Path, model: nn.Module, run: _Run, record: dict[str, Any], train_state: dict[str, Any] | None = None
) -> None:
    """Save an attnviz checkpoint atomically, with the training state when given."""
    from attnviz.io.save import save_checkpoint

    save_checkpoint(
        path,
        model,
        run.arch,
        arch_kwargs=run.arch_kwargs,
        preset=PRESET,
        class_names=run.class_names,
        record=record,
        extra=None if train_state is None else {"train_state": train_state},
    )


def _load_resume(path: Path, arch: str) -> dict[str, Any]:
    """Read a last checkpoint's weights, record and training state.

    Raises:
        CheckpointError: Missing or unreadable file, or no training state in it.
        UsageError: It holds another architecture.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint to resume not found: {path}")
    from attnviz.io.safe_load import read_checkpoint

    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != "attnviz" or "train_state" not in payload:
        raise CheckpointError(
            f"{path} holds no training state; resume from the *.last checkpoint of an attnviz train run"
        )
    if payload.get("arch") != arch:
        raise UsageError(f"{path} holds {payload.get('arch')!r}, not {arch!r}; pass --arch {payload.get('arch')}")
    record = payload.get("record") or {}
    return {
        "path": str(path),
        "epoch": int(payload["train_state"]["epoch"]),
        "state_dict": payload["state_dict"],
        "train_state": payload["train_state"],
        "record": record,
        "class_names": list(payload.get("class_names") or record.get("class_names") or []),
    }


# --- helpers ------------------------------------------------------------------------------


@contextmanager
def _forked_rng(runtime: Runtime) -> Iterator[None]:
    """Seed freely inside, and give the caller back its global RNG state afterwards."""
    device = runtime.device
    if device.type != "cuda":
        devices = []
    else:  # a bare "cuda" is the current device, where the model goes
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def _probe_batch(dataset: Dataset, count: int = 2) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first ``count`` samples of ``dataset`` as a batch (images, targets); ``None`` when it is empty."""
    samples = [dataset[i] for i in range(min(count, len(dataset)))]  # type: ignore[arg-type]
    if not samples:
        return None
    return torch.stack([image for image, _ in samples]), torch.tensor([int(target) for _, target in samples])


def _open_tensorboard(folder: Any, test_ds: Dataset, state: dict[str, Any] | None) -> Any:
    if folder is None:
        return None
    from attnviz.train.tblog import TensorBoardLog

    count = min(TENSORBOARD_IMAGES, len(test_ds))  # type: ignore[arg-type]
    images = torch.stack([test_ds[i][0] for i in range(count)])
    log = TensorBoardLog(folder, images, preset=PRESET)
    log.log_inputs(0 if state is None else state["epoch"])
    return log


def _group_summary(optimizer: torch.optim.Optimizer) -> str:
    parts = []
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"])
        parts.append(f"{group.get('name', '?')} ({count:,} params, lr {group['lr']:g})")
    return ", ".join(parts)


def _epoch_line(entry: dict[str, Any], epochs: int, improved: bool) -> str:
    return (
        f"epoch {entry['epoch']}/{epochs}: train loss {entry['train_loss']:.4f} acc {entry['train_acc']:.2f}% | "
        f"test loss {entry['test_loss']:.4f} acc {entry['test_acc']:.2f}% | lr {entry['lr']:g} | "
        f"{entry['seconds']:.1f}s" + (" | best" if improved else "")
    )


class _Progress:
    """Rich progress bars on stderr when it is a terminal; plain lines there otherwise (a job
    scheduler's log: one each tenth of an epoch's steps or 30 s, as the report's); nothing but log
    records when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.plain = enabled and not sys.stderr.isatty()
        self._bars: Any = None
        self._task: Any = None
        self._lines: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled and not self.plain:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_lines()
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def start(self, description: str, total: int) -> None:
        if self.plain:
            from attnviz.runtime.progress import ProgressLines

            self._finish_lines()
            self._lines = ProgressLines(total, 0, description, unit="step")
        if self._bars is not None:
            if self._task is not None:
                self._bars.remove_task(self._task)
            self._task = self._bars.add_task(description, total=total, loss="-")

    def advance(self, loss: float) -> None:
        if self._lines is not None:
            self._lines.advance(1)
        if self._bars is not None and self._task is not None:
            self._bars.update(self._task, advance=1, loss=f"{loss:.4f}")

    def line(self, text: str) -> None:
        logger.info(text)
        self._finish_lines()
        if self._bars is not None:
            self._bars.console.print(text, markup=False, highlight=False)
        elif self.plain:
            print(text, file=sys.stderr, flush=True)

    def _finish_lines(self) -> None:
        if self._lines is not None:
            self._lines.finish()
            self._lines = None
