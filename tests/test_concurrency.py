"""One engine shared by threads: loading memories never runs the model, and every model pass is exclusive,
so recalls beside concurrent loads, writes and reads give the answers they give alone."""

import threading

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem.engine import R3Mem
from r3mem.model import COMPRESS, EXPAND
from r3mem.tiny import tiny_model


def _active(model) -> list[list[str]]:
    return sorted({tuple(m.active_adapters) for m in model._tuners})


def test_from_bytes_runs_no_model_pass_and_leaves_the_adapter_alone(trained_like, sample_text):
    eng = trained_like
    blob = eng.to_bytes(eng.write(sample_text))
    eng.model._set_direction(EXPAND)
    calls = []
    real = eng.model._run
    eng.model._run = lambda *a, **k: calls.append(a[2]) or real(*a, **k)
    try:
        mem = eng.from_bytes(blob)
        eng.new_memory()
    finally:
        eng.model._run = real
    assert calls == [] and _active(eng.model) == [(EXPAND,)]
    assert len(mem.paragraphs) > 0


def test_new_memory_is_the_initial_state_and_follows_new_weights(trained_like):
    eng = trained_like
    with torch.no_grad():
        fresh = eng.model.initial_state(1)[0].to(eng.model.store_dtype)
    assert torch.equal(eng.new_memory().doc_state, fresh)
    assert eng.new_memory().doc_state is not eng.new_memory().doc_state  # a value, not shared storage
    state = {k: v + 0.01 for k, v in eng.model.trainable_state_dict().items()}
    eng.load_adapter_state(state)
    with torch.no_grad():
        moved = eng.model.initial_state(1)[0].to(eng.model.store_dtype)
    assert not torch.equal(moved, fresh) and torch.equal(eng.new_memory().doc_state, moved)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: passes swap merged weights in (`merged.py`)
def test_recalls_beside_loads_writes_and_reads_equal_recalls_alone(tok, sample_text, dtype):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(compute_dtype=dtype))
    perturb_trainables(eng.model)
    eng._refresh_identity()
    mem = eng.write(sample_text)
    blob = eng.to_bytes(mem)
    queries = ["Who was Henry Sibley?", "the river", "a ferry", None]
    alone = [eng.recall(mem, query=q, top_k=1).text for q in queries]
    written_alone = eng.to_bytes(eng.write("Another paragraph arrives.\n\n", mem))
    read_alone = eng.read("Say something.", max_new_tokens=2)
    stop, errors, got, written, read = threading.Event(), [], [], [], []

    def loader():
        while not stop.is_set():
            eng.from_bytes(blob)

    def writer():
        while not stop.is_set():
            written.append(eng.to_bytes(eng.write("Another paragraph arrives.\n\n", mem)))

    def reader():
        while not stop.is_set():
            read.append(eng.read("Say something.", max_new_tokens=2))

    def recaller():
        try:
            for _ in range(3):
                got.append([eng.recall(mem, query=q, top_k=1).text for q in queries])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    others = [threading.Thread(target=f) for f in (loader, loader, writer, reader)]
    recallers = [threading.Thread(target=recaller) for _ in range(2)]
    for t in others + recallers:
        t.start()
    for t in recallers:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert not errors
    assert got and all(g == alone for g in got)
    assert written and all(w == written_alone for w in written)  # writes beside recalls and reads: the same bytes
    assert read and all(r == read_alone for r in read)  # the bare model beside merged-weight passes


def test_the_compress_direction_is_set_by_each_pass(trained_like, sample_text):
    """A pass in one direction never leaves the next pass of another direction reading with it."""
    eng = trained_like
    mem = eng.write(sample_text)
    first = eng.recall(mem, index=0).text
    eng.model._set_direction(COMPRESS)  # whatever was active before, recall selects its own direction
    assert eng.recall(mem, index=0).text == first
