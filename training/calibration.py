"""Fitting the calibrator on out-of-fold raw scores (``inference.calibration`` applies it).

Which method: ``auto`` takes isotonic regression from ``ISOTONIC_MIN`` out-of-fold
predictions on, Platt scaling below. Isotonic regression assumes nothing about the shape
of the miscalibration but needs data to estimate a step function without overfitting;
Platt's two parameters are estimated well from a few dozen studies and suit the sigmoid-
shaped distortion boosted trees show (Niculescu-Mizil & Caruana, "Predicting good
probabilities with supervised learning", ICML 2005: Platt better below about 1000
calibration examples, isotonic better above).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from sklearn.isotonic import IsotonicRegression

from inference.calibration import Calibrator, Method

ISOTONIC_MIN = 1000
Choice = Literal["auto", "platt", "isotonic"]

Array = npt.NDArray[np.float64]


def choose(choice: Choice, n: int) -> tuple[Method, str]:
    """The method to use for ``n`` out-of-fold predictions, and why (for the model card)."""
    if choice == "platt":
        return "platt", "Platt scaling, as asked (--calibration platt)"
    if choice == "isotonic":
        return "isotonic", "isotonic regression, as asked (--calibration isotonic)"
    if n >= ISOTONIC_MIN:
        return "isotonic", (
            f"isotonic regression: {n} out-of-fold predictions (>= {ISOTONIC_MIN}) are enough "
            "to fit a monotone step function without assuming the sigmoid shape Platt assumes"
        )
    return "platt", (
        f"Platt scaling: {n} out-of-fold predictions (< {ISOTONIC_MIN}); isotonic regression "
        "overfits samples this small (Niculescu-Mizil & Caruana 2005), two parameters do not"
    )


def fit(method: Method, margins: Array, y: npt.NDArray[np.int_]) -> Calibrator:
    return fit_platt(margins, y) if method == "platt" else fit_isotonic(margins, y)


def fit_platt(margins: Array, y: npt.NDArray[np.int_]) -> Calibrator:
    """Platt's logistic fit of ``y`` on the raw score, with his target smoothing
    (positives aim at (N+ + 1)/(N+ + 2), negatives at 1/(N- + 2)), which keeps the fit
    finite when the scores separate the classes perfectly. Newton's method, deterministic."""
    positives = float(np.sum(y == 1))
    negatives = float(np.sum(y == 0))
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 1.0, float(np.log((positives + 1) / (negatives + 1)))

    def loss(a: float, b: float) -> float:
        z = a * margins + b
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    current = loss(a, b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * margins + b)))
        g = p - target
        w = p * (1 - p)
        grad = np.array([np.sum(g * margins), np.sum(g)])
        hess = np.array(
            [[np.sum(w * margins * margins), np.sum(w * margins)], [np.sum(w * margins), np.sum(w)]]
        ) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * float(step[0]), b - scale * float(step[1])
            candidate = loss(na, nb)
            if candidate <= current:
                break
            scale /= 2
        else:
            break
        a, b, previous, current = na, nb, current, candidate
        if previous - current < 1e-10:
            break
    return Calibrator("platt", a=a, b=b)


def fit_isotonic(margins: Array, y: npt.NDArray[np.int_]) -> Calibrator:
    """scikit-learn's isotonic regression of ``y`` on the raw score, kept as its knots."""
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(margins, y.astype(np.float64))
    return Calibrator(
        "isotonic",
        x=tuple(float(v) for v in model.X_thresholds_),
        y=tuple(float(v) for v in model.y_thresholds_),
    )


def cross_fitted(
    method: Method, margins: Array, y: npt.NDArray[np.int_], folds: npt.NDArray[np.int_]
) -> Array:
    """Calibrated out-of-fold probabilities where each fold's calibrator was fitted on the
    other folds only: the metrics then judge calibration on data it did not see."""
    calibrated = np.empty_like(margins)
    for fold in np.unique(folds):
        held = folds == fold
        calibrator = fit(method, margins[~held], y[~held])
        calibrated[held] = calibrator(margins[held])
    return calibrated
