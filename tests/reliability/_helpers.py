"""Helpers shared by the reliability tests (tests/reliability/): deadlines, CLI error lines, the
load-test benchmark module, bearer headers."""

from __future__ import annotations

import importlib.util
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
ADMIN = "admin-secret"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("r3mem_load_test", ROOT / "benchmarks" / "service" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


load_test = _load_benchmark()


@contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError instead of hanging (SIGALRM; torch returns to Python between ops)."""
    def expired(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s: a hang or a quadratic path")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def all_finite(mem) -> bool:
    return all(torch.isfinite(t).all() for t in [mem.doc_state, *(s.state for s in mem.paragraphs + mem.entities)])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def one_error_line(output: str) -> str:
    """The single `error:` line of a failed CLI run (library warnings printed before it are ignored)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]
