"""The MedNeXt training loop: multilabel BCE with class weights, AdamW with a cosine schedule,
mixed precision on a GPU, a checkpoint every epoch (resumable), validation AUROC per label,
early stopping, a progress bar.

Checkpoints are in the nnU-Net v1 trainer's layout (MedNeXt.md, "Checkpoints": ``epoch``,
``state_dict``, ``optimizer_state_dict``, ``lr_scheduler_state_dict``, ``plot_stuff``,
``best_stuff``, ``amp_grad_scaler``), so the analyzer, and any MedNeXt tooling, reads them as
it reads upstream's; ``ctnode`` adds the labels and the validation split under ``ctnode`` so
a resumed run is refused if either changed. ``model_latest.model`` is written after every
epoch, ``model_best.model`` whenever the mean validation AUROC improves (both atomically).

Class weights: each label's positives weigh negatives/positives of the training split
(``pos_weight``), so a rare finding is not learnt as "never". Operating thresholds: per
label, Youden's J on the validation split at the best epoch (0.5 where the split holds one
class only, said in the history).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from tqdm import tqdm  # type: ignore[import-untyped]

from inference.mednext.checkpoint import state_dict_of
from training.metrics import auroc, choose_threshold

log = logging.getLogger(__name__)

LATEST = "model_latest.model"
BEST = "model_best.model"

Input = npt.NDArray[np.float32] | Path


@dataclass(frozen=True)
class TrainOptions:
    """The knobs of ``ctnode mednext train`` (its ``--help`` gives the defaults' reasons)."""

    epochs: int = 100
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 15
    seed: int = 42
    amp: bool = True
    device: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch size and patience must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("the validation fraction must be in (0, 1)")


@dataclass
class FitResult:
    """The best epoch's weights and what validation measured there."""

    state: dict[str, Tensor]
    best_epoch: int
    history: list[dict[str, Any]]
    val_probs: npt.NDArray[np.float64]
    val_y: npt.NDArray[np.int_]
    auroc: list[float]
    thresholds: list[float]
    stopped_early: bool
    device: str = ""


def split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices: a seeded permutation, at least one of each."""
    if n < 2:
        raise ValueError("training needs at least 2 labelled studies (one to validate on)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * fraction)))
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def load_input(item: Input) -> npt.NDArray[np.float32]:
    """A (1, D, H, W) model input, in memory or a ``.npy`` the data step cached."""
    if isinstance(item, Path):
        return np.load(item, mmap_mode="r")  # type: ignore[no-any-return]
    return item


def pick_device(name: str) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pos_weight(y: npt.NDArray[np.int_]) -> Tensor:
    """negatives / positives per label (1 where a label has no positive)."""
    positives = y.sum(axis=0).astype(np.float64)
    negatives = len(y) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1.0), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def _batch(inputs: Sequence[Input], index: Sequence[int]) -> Tensor:
    return torch.from_numpy(np.stack([np.asarray(load_input(inputs[i])) for i in index]))


def _autocast_dtype() -> torch.dtype:
    """bfloat16 where the GPU has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Step:
    """One optimisation step on a batch; mixed precision only on CUDA (never the CPU)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: nn.Module,
        device: torch.device,
        amp: bool,
    ) -> None:
        self.model, self.optimizer, self.loss, self.device = model, optimizer, loss, device
        self.amp = amp and device.type == "cuda"
        self.dtype = _autocast_dtype() if self.amp else torch.float32
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)

    def __call__(self, x: Tensor, y: Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, self.dtype, enabled=self.amp):
            logits = self.model(x.to(self.device, non_blocking=True))
        loss = self.loss(logits.float(), y.to(self.device))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


def logits_of(
    model: nn.Module,
    inputs: Sequence[Input],
    index: Sequence[int],
    device: torch.device,
    batch_size: int,
) -> Tensor:
    """(len(index), labels) logits in float32 (validation, as the node scores), on the CPU."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            x = _batch(inputs, index[start : start + batch_size]).to(device)
            out.append(model(x).float().cpu())
    return torch.cat(out)


def probabilities(logits: Tensor) -> npt.NDArray[np.float64]:
    return torch.sigmoid(logits).numpy().astype(np.float64)


def per_label_auroc(y: npt.NDArray[np.int_], p: npt.NDArray[np.float64]) -> list[float]:
    """AUROC of each label (NaN where the split holds one class only)."""
    return [auroc(y[:, j], p[:, j]) for j in range(y.shape[1])]


def thresholds_for(y: npt.NDArray[np.int_], p: npt.NDArray[np.float64]) -> list[float]:
    """Youden's J per label; 0.5 where the validation split holds one class only."""
    out = []
    for j in range(y.shape[1]):
        both = 0 < int(y[:, j].sum()) < len(y)
        out.append(float(np.clip(choose_threshold(y[:, j], p[:, j], None), 0, 1)) if both else 0.5)
    return out


def _save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".writing")
    torch.save(data, tmp)
    os.replace(tmp, path)


def _score(mean_auroc: float, val_loss: float) -> float:
    """Model selection: mean validation AUROC; the loss only where no label has both classes."""
    return mean_auroc if math.isfinite(mean_auroc) else -val_loss


def fit(
    model: nn.Module,
    inputs: Sequence[Input],
    y: npt.NDArray[np.int_],
    labels: Sequence[str],
    options: TrainOptions,
    workdir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``model`` (a classifier of ``len(labels)`` outputs) on ``inputs`` and ``y``
    (studies x labels, 0/1); checkpoints in ``workdir``; ``resume`` continues from its
    ``model_latest.model``."""
    if y.shape != (len(inputs), len(labels)):
        raise ValueError(f"labels of shape {y.shape} for {len(inputs)} inputs and {len(labels)}")
    torch.manual_seed(options.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    device = pick_device(options.device)
    train_idx, val_idx = split(len(inputs), options.val_fraction, options.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=options.learning_rate, weight_decay=options.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight(y[train_idx]).to(device))
    step = Step(model, optimizer, loss, device, options.amp)
    ours = {"labels": list(labels), "val": val_idx, "options": asdict(options)}
    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "score": -math.inf, "bad_epochs": 0}
    start = 0
    if resume and (workdir / LATEST).is_file():
        saved = torch.load(workdir / LATEST, map_location=device, weights_only=True)
        theirs = saved.get("ctnode", {})
        if theirs.get("labels") != list(labels) or theirs.get("val") != val_idx:
            raise ValueError(
                f"{workdir / LATEST} was trained on other labels or another split: start "
                "afresh (another work folder) or use the same labels, studies and seed"
            )
        state, _ = state_dict_of(saved, LATEST)
        model.load_state_dict(state)
        optimizer.load_state_dict(saved["optimizer_state_dict"])
        scheduler.load_state_dict(saved["lr_scheduler_state_dict"])
        step.scaler.load_state_dict(saved["amp_grad_scaler"])
        history = list(saved["plot_stuff"]["history"])
        best = dict(saved["best_stuff"])
        start = int(saved["epoch"])
        torch.set_rng_state(saved["ctnode"]["rng"])
    rng = np.random.default_rng(options.seed + start)
    stopped_early = False
    for epoch in range(start, options.epochs):
        if best["bad_epochs"] >= options.patience:
            stopped_early = True
            break
        began = time.perf_counter()
        order = rng.permutation(train_idx)
        batches = [
            order[i : i + options.batch_size] for i in range(0, len(order), options.batch_size)
        ]
        losses = []
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{options.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for index in bar:
            losses.append(step(_batch(inputs, index), torch.from_numpy(y[index]).float()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        scheduler.step()
        train_seconds = time.perf_counter() - began
        logits = logits_of(model, inputs, val_idx, device, options.batch_size)
        with torch.no_grad():
            target = torch.from_numpy(y[val_idx]).float()
            val_loss = float(loss(logits.to(device), target.to(device)))
        probs = probabilities(logits)
        aurocs = per_label_auroc(y[val_idx], probs)
        finite = [a for a in aurocs if math.isfinite(a)]
        mean = float(np.mean(finite)) if finite else float("nan")
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_auroc": aurocs,
                "mean_val_auroc": mean,
                "train_volumes_per_s": len(order) / train_seconds,
                "lr": float(scheduler.get_last_lr()[0]),
            }
        )
        score = _score(mean, val_loss)
        improved = score > float(best["score"]) + 1e-6
        if improved:
            best = {"epoch": epoch + 1, "score": score, "bad_epochs": 0}
        else:
            best["bad_epochs"] = int(best["bad_epochs"]) + 1
        checkpoint = {
            "epoch": epoch + 1,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state_dict": optimizer.state_dict(),
            "lr_scheduler_state_dict": scheduler.state_dict(),
            "plot_stuff": {"history": history},
            "best_stuff": best,
            "amp_grad_scaler": step.scaler.state_dict(),
            "ctnode": {**ours, "rng": torch.get_rng_state()},
        }
        _save(workdir / LATEST, checkpoint)
        if improved:
            _save(workdir / BEST, checkpoint)
        line = (
            f"epoch {epoch + 1}/{options.epochs}: train loss {history[-1]['train_loss']:.4f}, "
            f"val loss {val_loss:.4f}, mean val AUROC {mean:.3f}"
            f"{' (best)' if improved else ''}, {history[-1]['train_volumes_per_s']:.2f} volumes/s"
        )
        (report or log.info)(line)
    saved = torch.load(workdir / BEST, map_location="cpu", weights_only=True)
    state, _ = state_dict_of(saved, BEST)
    model.load_state_dict(state)
    probs = probabilities(logits_of(model, inputs, val_idx, device, options.batch_size))
    val_y = y[val_idx]
    return FitResult(
        state=state,
        best_epoch=int(saved["best_stuff"]["epoch"]),
        history=history,
        val_probs=probs,
        val_y=val_y,
        auroc=per_label_auroc(val_y, probs),
        thresholds=thresholds_for(val_y, probs),
        stopped_early=stopped_early,
        device=str(device),
    )
