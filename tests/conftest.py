import os
import socket
import subprocess
import time

import httpx
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from a second thread, and on a busy 2-core machine oversubscription
# makes them many times slower.
torch.set_num_threads(1)

from r3mem.config import R3MemConfig  # noqa: E402
from r3mem.engine import R3Mem  # noqa: E402
from r3mem.model import R3MemModel  # noqa: E402
from r3mem.store import MemoryStore  # noqa: E402
from r3mem.tiny import SAMPLE_TEXT, tiny_config, tiny_model, tiny_tokenizer  # noqa: E402

ALL_LINEAR = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def tiny_cfg(**kw) -> R3MemConfig:
    return tiny_config(**{"base_model": "tiny", **kw})


def tiny_r3(family: str = "llama", **kw) -> R3MemModel:
    return R3MemModel(tiny_model(family), tiny_cfg(**kw))


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def engine(tok):
    return R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg())


@pytest.fixture
def sample_text():
    return SAMPLE_TEXT


@pytest.fixture
def trained_like(tok):
    """A tiny engine whose adapters are non-zero, so memories depend on them (as after training)."""
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg())
    perturb_trainables(eng.model)
    eng._refresh_identity()
    return eng


def perturb_trainables(model, scale: float = 0.05, seed: int = 1) -> None:
    """Give zero-initialised adapters non-zero values so 'adapters on' differs from 'off'."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def store(tmp_path):
    """An empty SQLite MemoryStore in the test's folder (closed at the end)."""
    with MemoryStore(tmp_path / "store.db") as opened:
        yield opened


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, output=lambda: "") -> None:
    """Poll `url`/health until a live `r3mem serve` answers 200; fail if `timeout` seconds pass, or with
    `output()` (the server's log, read once it has exited) if the process exits first."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"r3mem serve exited with {proc.returncode}: {output()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            pytest.fail(f"r3mem serve did not start within {timeout} s")
        time.sleep(0.2)


def uvicorn_server(app):
    """`app` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    from r3mem.service.background import serve_in_thread

    return serve_in_thread(app)
