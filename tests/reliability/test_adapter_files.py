"""Bad adapter folders, refused with one AdapterError before any tensor is used.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem.adapter import META, WEIGHTS, AdapterError, adapter_hash, read_adapter
from r3mem.config import ConfigError
from r3mem.engine import R3Mem
from r3mem.memfile import MemoryFileError
from r3mem.tiny import SAMPLE_TEXT, tiny_model

torch.set_num_threads(1)


@pytest.fixture
def adapter_dir(tmp_path, tok):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(base_model="tiny-llama"))
    perturb_trainables(eng.model)
    h = eng.save_adapter(tmp_path / "adapter", trained=True)
    return tmp_path / "adapter", h


def _edit_meta(path: Path, **changes):
    meta = json.loads((path / META).read_text())
    for k, v in changes.items():
        if v is KeyError:
            meta.pop(k)
        else:
            meta[k] = v
    (path / META).write_text(json.dumps(meta))


def _rewrite_weights(path: Path, fn):
    """Re-save the weights after fn(state), with a matching hash: a consistent but unusable folder."""
    from safetensors.torch import save

    _, state, meta = read_adapter(path)
    state = {k: v.clone() for k, v in state.items()}
    fn(state)
    (path / WEIGHTS).write_bytes(save(state))
    _edit_meta(path, adapter_hash=adapter_hash(state))


def _flip(path: Path, where: str):
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    i = {"tensor data": len(data) - 3, "header": 8 + n // 2, "length": 2}[where]
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


ADAPTER_DAMAGE = {
    "weights truncated": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:-100]), "corrupted weights"),
    "weights empty": (lambda p: (p / WEIGHTS).write_bytes(b""), "corrupted weights"),
    "weights header cut": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:40]), "corrupted weights"),
    "bit flip in tensor data": (lambda p: _flip(p / WEIGHTS, "tensor data"), "hash mismatch"),
    "bit flip in tensor header": (lambda p: _flip(p / WEIGHTS, "header"), "corrupted weights|hash mismatch"),
    "bit flip in header length": (lambda p: _flip(p / WEIGHTS, "length"), "corrupted weights"),
    "weights missing": (lambda p: (p / WEIGHTS).unlink(), "not an r3mem adapter folder"),
    "header missing": (lambda p: (p / META).unlink(), "not an r3mem adapter folder"),
    "header not JSON": (lambda p: (p / META).write_text("{format: r3mem"), "not valid JSON"),
    "header not UTF-8": (lambda p: (p / META).write_bytes(b'{"format": "\xff"}'), "not valid JSON"),
    "header is a list": (lambda p: (p / META).write_text("[1, 2]"), "not an r3mem adapter header"),
    "header of another format": (lambda p: _edit_meta(p, format="r3mem-memory"), "not an r3mem adapter header"),
    "future format version": (lambda p: _edit_meta(p, format_version=2), "newer than this r3mem supports"),
    "format version 0": (lambda p: _edit_meta(p, format_version=0), "invalid adapter format version 0"),
    "format version a string": (lambda p: _edit_meta(p, format_version="1"), "invalid adapter format version '1'"),
    "config missing": (lambda p: _edit_meta(p, config=KeyError), "invalid config"),
    "config invalid": (lambda p: _edit_meta(p, config={"num_mem_tokens": -1}), "invalid config.*num_mem_tokens"),
    "config unknown field": (lambda p: _edit_meta(p, config={"warp_drive": 1}), "invalid config.*warp_drive"),
    "hash missing": (lambda p: _edit_meta(p, adapter_hash=KeyError), "hash mismatch"),
    "NaN weights, consistent hash": (
        lambda p: _rewrite_weights(p, lambda s: s[sorted(s)[0]].view(-1).__setitem__(0, float("nan"))),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("damage", list(ADAPTER_DAMAGE), ids=lambda d: d.replace(" ", "-"))
def test_damaged_adapter_is_refused_before_any_tensor_is_used(adapter_dir, damage, monkeypatch):
    path, _ = adapter_dir
    corrupt, message = ADAPTER_DAMAGE[damage]
    corrupt(path)
    with pytest.raises(AdapterError, match=message) as e:
        read_adapter(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)

    def must_not_run(*a, **k):
        raise AssertionError("the base model was loaded for an adapter that fails its checks")

    monkeypatch.setattr("r3mem.engine.load_base", must_not_run)
    with pytest.raises(AdapterError, match=message):
        R3Mem.from_pretrained(path)


def test_good_adapter_loads_and_foreign_ones_are_refused(adapter_dir, tmp_path, tok, monkeypatch):
    path, h = adapter_dir
    eng = R3Mem.from_pretrained(path)  # base_model "tiny-llama" comes from the stored config
    assert eng.adapter_hash == h and eng.trained and eng.base_model_id.startswith("tiny-llama|")
    # written for another base model (same parameter names and shapes: qwen2 vs llama)
    other = tmp_path / "qwen"
    R3Mem.from_base(tiny_model("qwen2"), tok, tiny_cfg(base_model="tiny-qwen2")).save_adapter(other)
    used = []
    monkeypatch.setattr(R3Mem, "load_adapter_state", lambda self, state, source="": used.append(source))
    with pytest.raises(AdapterError, match="trained for base model 'tiny-qwen2"):
        R3Mem.from_pretrained(other, base_model="tiny-llama")
    # a header edited to claim another base model
    claimed = tmp_path / "claimed"
    shutil.copytree(path, claimed)
    _edit_meta(claimed, base_model_id="smollm2|llama|d=576|L=30|V=49152")
    with pytest.raises(AdapterError, match="trained for base model 'smollm2"):
        R3Mem.from_pretrained(claimed)
    assert used == []  # refused before the adapter's tensors went anywhere near the model
    monkeypatch.undo()
    # a consistent folder whose tensors do not fit the config it names
    wrong_shape = tmp_path / "shape"
    shutil.copytree(path, wrong_shape)
    meta = json.loads((wrong_shape / META).read_text())
    _edit_meta(wrong_shape, config={**meta["config"], "num_mem_tokens": 8})
    with pytest.raises(AdapterError, match="shape"):
        R3Mem.from_pretrained(wrong_shape)
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    _rewrite_weights(missing, lambda s: s.pop(sorted(s)[-1]))
    with pytest.raises(AdapterError, match="does not fit this model"):
        R3Mem.from_pretrained(missing)
    with pytest.raises(AdapterError, match="does not exist"):
        R3Mem.from_pretrained(tmp_path / "nowhere")


def test_levels_override_gives_the_single_pass_write(adapter_dir, tmp_path):
    path, h = adapter_dir
    full, doc = R3Mem.from_pretrained(path), R3Mem.from_pretrained(path, levels="document")
    assert doc.adapter_hash == h and doc.config.hierarchy_levels == ("document",)
    mf, md = full.write(SAMPLE_TEXT), doc.write(SAMPLE_TEXT)
    assert mf.paragraphs and not md.paragraphs and not md.entities
    torch.testing.assert_close(md.doc_state, mf.doc_state)  # the retention pass does not depend on the slots
    with pytest.raises(ValueError, match="not in the levels this memory is written with"):
        doc.recall(md, level="paragraph")
    doc.save(md, tmp_path / "doc.r3mem")
    with pytest.raises(MemoryFileError, match="memory_layout"):  # another layout: refused, not misread
        full.load(tmp_path / "doc.r3mem")
    with pytest.raises(ConfigError, match="hierarchy_levels"):
        R3Mem.from_pretrained(path, levels=["paragraph"])
