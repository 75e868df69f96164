"""The noise schedule, its respacing, and the anomaly procedure's DDIM steps.

Wolleb et al. (diffusion-anomaly.md, "The anomaly procedure"): the slice is noised to the
first timestep, encoded by ``noise_level - 1`` deterministic DDIM reverse steps (the
original steps at t = 1 .. L-1), then decoded by as many DDIM steps (t = L-2 .. 0) whose
predicted noise is shifted by the classifier's gradient towards "healthy" (Song et al.'s
score conditioning). Coefficients are computed in float64 and used in float32, as the
original does, so that our steps reproduce its numbers.

Respacing keeps a subset of the trained timesteps (``space_timesteps``): the betas are
re-derived from the kept cumulative alphas, and the networks are given each kept step's
original timestep. The original hands the classifier the respaced index instead (its
``condition_score2`` bypasses the timestep map); with the paper's ``ddim1000`` the two are
the same, and with fewer steps ours asks the classifier about the noise it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

F64 = npt.NDArray[np.float64]
# (x, original timesteps) -> predicted epsilon (the UNet's first half of channels)
Denoiser = Callable[[Tensor, Tensor], Tensor]
# (x, original timesteps) -> class logits
Logits = Callable[[Tensor, Tensor], Tensor]


def linear_betas(steps: int) -> F64:
    """The linear schedule, scaled so that any number of steps spans the same noise."""
    scale = 1000 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


def space_timesteps(steps: int, spacing: str) -> list[int]:
    """The kept timesteps: ``""`` all, ``"ddimN"`` an even integer stride giving N steps,
    or comma-separated counts per equal section (fractional strides, rounded)."""
    if not spacing:
        return list(range(steps))
    if spacing.startswith("ddim"):
        want = int(spacing[4:])
        for step in range(1, steps):
            if len(range(0, steps, step)) == want:
                return list(range(0, steps, step))
        raise ValueError(f"cannot take exactly {want} of {steps} steps with an integer stride")
    counts = [int(c) for c in spacing.split(",")]
    size_per, extra = divmod(steps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated as the original does, so rounding lands alike
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


@dataclass(frozen=True)
class Schedule:
    """Cumulative alphas of the (respaced) process and each step's original timestep."""

    betas: F64
    timesteps: tuple[int, ...]

    @classmethod
    def create(cls, betas: Sequence[float] | F64, spacing: str = "") -> Schedule:
        base = np.asarray(betas, dtype=np.float64)
        kept = space_timesteps(len(base), spacing)
        if kept == list(range(len(base))):
            return cls(base, tuple(kept))
        cumulative = np.cumprod(1.0 - base)
        new, last = [], 1.0
        for t in kept:
            new.append(1.0 - cumulative[t] / last)
            last = cumulative[t]
        return cls(np.asarray(new, dtype=np.float64), tuple(kept))

    @property
    def steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> F64:
        return np.asarray(np.cumprod(1.0 - self.betas), dtype=np.float64)

    def _at(self, values: F64, t: int, like: Tensor) -> Tensor:
        """``values[t]`` as a float32 scalar tensor on ``like``'s device."""
        return torch.tensor(float(values[t]), dtype=torch.float32, device=like.device)

    def coefficients(self, t: int, like: Tensor) -> dict[str, Tensor]:
        """The float32 coefficients one step at index ``t`` reads."""
        acp = self.alphas_cumprod
        prev = np.append(1.0, acp[:-1])
        nxt = np.append(acp[1:], 0.0)
        with np.errstate(divide="ignore"):  # a schedule may end at alpha_bar 0 (tiny's)
            recip, recipm1 = np.sqrt(1.0 / acp), np.sqrt(1.0 / acp - 1.0)
        return {
            "acp": self._at(acp, t, like),
            "prev": self._at(prev, t, like),
            "next": self._at(nxt, t, like),
            "sqrt_acp": self._at(np.sqrt(acp), t, like),
            "sqrt_1m_acp": self._at(np.sqrt(1.0 - acp), t, like),
            "recip": self._at(recip, t, like),
            "recipm1": self._at(recipm1, t, like),
        }

    def original(self, t: int, batch: int, device: torch.device) -> Tensor:
        """The trained timestep of respaced index ``t``, as the networks' input."""
        return torch.full((batch,), self.timesteps[t], dtype=torch.long, device=device)


def q_sample(schedule: Schedule, x0: Tensor, t: int, noise: Tensor) -> Tensor:
    """``x0`` noised to index ``t`` with the given Gaussian ``noise``."""
    c = schedule.coefficients(t, x0)
    return c["sqrt_acp"] * x0 + c["sqrt_1m_acp"] * noise


def _xstart(c: dict[str, Tensor], x: Tensor, eps: Tensor, clip: bool) -> Tensor:
    x0 = c["recip"] * x - c["recipm1"] * eps
    return x0.clamp(-1, 1) if clip else x0


def _eps(c: dict[str, Tensor], x: Tensor, x0: Tensor) -> Tensor:
    return (c["recip"] * x - x0) / c["recipm1"]


def ddim_reverse_step(
    schedule: Schedule, denoiser: Denoiser, x: Tensor, t: int, *, clip: bool = True
) -> Tensor:
    """One deterministic DDIM step from index ``t`` to ``t + 1`` (encoding)."""
    c = schedule.coefficients(t, x)
    eps_model = denoiser(x, schedule.original(t, x.shape[0], x.device))
    x0 = _xstart(c, x, eps_model, clip)
    eps = _eps(c, x, x0)
    return x0 * torch.sqrt(c["next"]) + torch.sqrt(1 - c["next"]) * eps


def classifier_gradient(classifier: Logits, x: Tensor, t: Tensor, target: int) -> Tensor:
    """d log softmax(classifier(x, t))[target] / dx, per image of the batch."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x_in, t), dim=-1)
        selected = log_probs[:, target].sum()
        (grad,) = torch.autograd.grad(selected, x_in)
    return grad


def ddim_guided_step(
    schedule: Schedule,
    denoiser: Denoiser,
    classifier: Logits | None,
    x: Tensor,
    t: int,
    *,
    scale: float,
    target: int = 0,
    clip: bool = True,
) -> Tensor:
    """One DDIM step (eta 0) from index ``t`` to ``t - 1``, its noise estimate shifted by
    ``scale`` times the classifier's gradient towards class ``target``."""
    c = schedule.coefficients(t, x)
    ts = schedule.original(t, x.shape[0], x.device)
    x0 = _xstart(c, x, denoiser(x, ts), clip)
    if classifier is not None and scale:
        eps = _eps(c, x, x0)
        grad = classifier_gradient(classifier, x, ts, target) * scale
        eps = eps - torch.sqrt(1 - c["acp"]) * grad
        x0 = c["recip"] * x - c["recipm1"] * eps
    eps = _eps(c, x, x0)
    return x0 * torch.sqrt(c["prev"]) + torch.sqrt(1 - c["prev"]) * eps


@dataclass(frozen=True)
class Trace:
    """What the procedure passed through, for the reference and for display."""

    noised: Tensor
    encoded: Tensor
    healthy: Tensor
    anomaly: Tensor


def anomaly_map(
    schedule: Schedule,
    denoiser: Denoiser,
    classifier: Logits | None,
    x0: Tensor,
    noise: Tensor,
    *,
    noise_level: int,
    scale: float,
    clip: bool = True,
    target: int = 0,
) -> Trace:
    """The whole procedure on a batch ``x0`` in [-1, 1]: noised to index 0 with ``noise``,
    encoded by ``noise_level - 1`` reverse steps at t = 1 .. L-1 (as the original indexes
    them), decoded with guidance at t = L-2 .. 0; the anomaly map is
    |x0 - reconstruction| summed over channels."""
    if not 2 <= noise_level <= schedule.steps:
        raise ValueError(f"noise level {noise_level} outside 2..{schedule.steps}")
    with torch.no_grad():
        noised = q_sample(schedule, x0, 0, noise)
        x = noised
        for k in range(1, noise_level):
            x = ddim_reverse_step(schedule, denoiser, x, k, clip=clip)
        encoded = x
        for i in range(noise_level - 2, -1, -1):
            x = ddim_guided_step(
                schedule, denoiser, classifier, x, i, scale=scale, target=target, clip=clip
            )
    return Trace(noised, encoded, x, (x0 - x).abs().sum(dim=1))


def network_evaluations(noise_level: int) -> tuple[int, int]:
    """(UNet forwards, classifier forward+backward passes) the procedure costs per slice."""
    return 2 * (noise_level - 1), noise_level - 1
