"""Calibrated recall confidence: the probability that a slot's greedy expansion is exactly its text.

A slot's raw confidence is the geometric mean of the probabilities its decoder gave the tokens it
produced (`Reconstruction.confidence`). It ranks slots well but is not a probability of anything a user
asks about: an 8x slot whose tokens average 0.9 is usually wrong somewhere. `SlotCalibration` maps the
raw figures to P(the expansion equals the written text) with a logistic fit (Platt scaling) on
held-out slots (`benchmarks/recon/calibrate.py` fits and measures it; LOG.md). It belongs to one set of
adapter weights: the file records their hash and an engine refuses a calibration of other weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CALIBRATION_FILE", "CalibrationError", "SlotCalibration", "features", "fit", "load_calibration"]

CALIBRATION_FILE = "calibration.json"
_FORMAT = "r3mem-slot-calibration"
_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that does not belong to these weights or is not a calibration file."""


def features(token_probs: Sequence[float]) -> tuple[float, float]:
    """(log geometric-mean probability, log minimum probability) of an expansion's produced tokens."""
    logs = [math.log(max(p, 1e-12)) for p in token_probs]
    return sum(logs) / len(logs), min(logs)


@dataclass(frozen=True)
class SlotCalibration:
    """P(exact) = sigmoid(w . features(token_probs) + bias); `fitted_on` says on what (slots, texts)."""

    weights: tuple[float, float]
    bias: float
    adapter_hash: str
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def p_exact(self, token_probs: Sequence[float]) -> float | None:
        """Calibrated probability that the expansion with these token probabilities is exact (None: no token)."""
        if not token_probs:
            return None
        z = self.bias + sum(w * f for w, f in zip(self.weights, features(token_probs)))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "format_version": _VERSION, "adapter_hash": self.adapter_hash,
                "weights": list(self.weights), "bias": self.bias, "features": ["log_geo_mean_p", "log_min_p"],
                "fitted_on": self.fitted_on}

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)


def load_calibration(path: str | Path, adapter_hash: str) -> SlotCalibration:
    """Read a calibration file; refused (`CalibrationError`, one line) unless it is one and was fitted on
    the weights with `adapter_hash`."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: not a readable calibration file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != _FORMAT or d.get("format_version") != _VERSION:
        raise CalibrationError(f"{path}: not a slot calibration of format version {_VERSION}")
    if d.get("adapter_hash") != adapter_hash:
        raise CalibrationError(f"{path}: fitted on adapter {d.get('adapter_hash')}, these weights are {adapter_hash}")
    w = d.get("weights")
    if not (isinstance(w, list) and len(w) == 2 and all(isinstance(x, (int, float)) for x in w)
            and isinstance(d.get("bias"), (int, float))):
        raise CalibrationError(f"{path}: weights must be two numbers and bias one")
    return SlotCalibration((float(w[0]), float(w[1])), float(d["bias"]), adapter_hash, d.get("fitted_on") or {})


def fit(token_probs: Sequence[Sequence[float]], exact: Sequence[bool], adapter_hash: str,
        fitted_on: dict[str, Any] | None = None) -> SlotCalibration:
    """Platt scaling of `features` on held-out slots: `token_probs[i]` of slot i's greedy expansion and
    whether it was exact. Both outcomes must occur."""
    from sklearn.linear_model import LogisticRegression

    rows = [(features(p), bool(y)) for p, y in zip(token_probs, exact, strict=True) if p]
    if len({y for _, y in rows}) < 2:
        raise ValueError("fit: needs slots that were reconstructed exactly and slots that were not")
    lr = LogisticRegression(C=100.0, max_iter=1000).fit([f for f, _ in rows], [y for _, y in rows])
    return SlotCalibration((float(lr.coef_[0][0]), float(lr.coef_[0][1])), float(lr.intercept_[0]), adapter_hash,
                           {"n_slots": len(rows), **(fitted_on or {})})
