"""Turning a trained fusion model's raw score (log-odds) into a calibrated probability.

Both methods are fitted by ``training.calibration`` on out-of-fold predictions and stored
as plain JSON numbers (no pickle: a weights file must not be able to run code):

- Platt scaling: ``p = 1 / (1 + exp(-(a * margin + b)))``, two parameters; the choice for
  small cohorts, where isotonic regression overfits (Niculescu-Mizil & Caruana, ICML 2005).
- Isotonic regression: a monotone step function through ``(x, y)`` knots, linear between
  them and flat beyond the ends (as scikit-learn's ``IsotonicRegression`` predicts); no
  shape assumption, so the better choice once there are about a thousand predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Method = Literal["platt", "isotonic"]


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map from raw score (log-odds) to probability."""

    method: Method
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method == "isotonic":
            if len(self.x) != len(self.y) or not self.x:
                raise ValueError("isotonic calibrator needs as many x as y knots, at least one")
            if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
                raise ValueError("isotonic calibrator knots must be sorted by x")
            if any(not 0.0 <= v <= 1.0 for v in self.y):
                raise ValueError("isotonic calibrator values must lie in [0, 1]")
        elif self.method != "platt":
            raise ValueError(f"unknown calibration method {self.method!r}")
        if not all(np.isfinite([self.a, self.b, *self.x, *self.y])):
            raise ValueError("calibrator parameters must be finite")

    def __call__(self, margin: npt.ArrayLike) -> npt.NDArray[np.float64]:
        scores = np.asarray(margin, dtype=np.float64)
        if self.method == "platt":
            probabilities = 1.0 / (1.0 + np.exp(-(self.a * scores + self.b)))
        else:
            probabilities = np.interp(scores, np.array(self.x), np.array(self.y))
        return np.asarray(probabilities, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibrator:
        """Parse :meth:`to_json` output; ``ValueError`` with a sentence if malformed."""
        try:
            method = data["method"]
            if method == "platt":
                return cls("platt", a=float(data["a"]), b=float(data["b"]))
            if method == "isotonic":
                return cls(
                    "isotonic",
                    x=tuple(float(v) for v in data["x"]),
                    y=tuple(float(v) for v in data["y"]),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibrator: {exc}") from exc
        raise ValueError(f"unknown calibration method {method!r}")
