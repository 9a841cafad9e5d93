"""Quantized memory tokens: the codes, memories written with them, their files and what refuses them."""

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg
from safetensors.torch import load as st_load

from r3mem.engine import R3Mem
from r3mem.memfile import MemoryFileError
from r3mem.quant import dequantize, fake_quantize, group_of, packed_bytes, quantize
from r3mem.tiny import SAMPLE_TEXT, tiny_model


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_codes_round_trip_within_half_a_step(bits):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 2, 5, 64, generator=g) * 2).to(torch.float16)
    p = quantize(x, bits)
    y = dequantize(p)
    assert y.shape == x.shape and y.dtype == torch.float16
    step = p.step.float().repeat_interleave(group_of(64), -1).reshape(x.shape)
    assert ((y.float() - x.float()).abs() <= step / 2 + 1e-2 * step + 1e-3).all()
    assert packed_bytes(p) == x.numel() * bits // 8 + 2 * 2 * x.numel() // 32
    groups = x.float().reshape(3, 2, 5, 2, 32)
    assert torch.equal(p.low.float(), groups.amin(-1).half().float())  # each group's minimum is exact
    const = quantize(torch.full((4, 32), 0.5, dtype=torch.float16), bits)
    assert torch.equal(dequantize(const), torch.full((4, 32), 0.5, dtype=torch.float16))  # a zero step
    with pytest.raises(ValueError, match="memory_bits"):
        quantize(x, 3)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_fake_quantize_reads_what_the_writer_stores_with_the_identity_gradient(bits):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 4, 64, generator=g) * 3).requires_grad_()
    y = fake_quantize(x, bits)
    assert y.dtype == x.dtype
    assert torch.equal(y.detach(), dequantize(quantize(x.detach().half(), bits), torch.float32))
    assert not torch.equal(y.detach(), x.detach())  # it did round
    w = torch.randn(x.shape, generator=g)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)  # straight through: d y / d x = 1
    assert fake_quantize(x, 16) is x


def _engine(tok, bits):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(memory_bits=bits), keys=None)
    perturb_trainables(eng.model)
    eng._refresh_identity()
    return eng


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_memories_are_split_invariant_smaller_and_round_trip(tok, bits):
    eng = _engine(tok, bits)
    whole = eng.flush(eng.write(SAMPLE_TEXT))
    cut = len(SAMPLE_TEXT) // 2
    split = eng.flush(eng.write(SAMPLE_TEXT[cut:], eng.write(SAMPLE_TEXT[:cut])))
    blob = eng.to_bytes(whole)
    assert eng.to_bytes(split) == blob
    back = eng.from_bytes(blob)
    assert eng.to_bytes(back) == blob
    for a, b in zip(whole.paragraphs + whole.entities, back.paragraphs + back.entities):
        assert a.packed.bits == bits and torch.equal(a.state, b.state) and torch.equal(a.state, dequantize(a.packed))
    # the document state too: the recurrence carries the quantized state on, and the file holds its codes
    assert whole.n_segments > 1 and whole.doc_packed.bits == bits
    assert torch.equal(whole.doc_state, dequantize(whole.doc_packed)) and torch.equal(back.doc_state, whole.doc_state)
    assert "doc_state" not in st_load(blob) and "doc_state.codes" in st_load(blob)
    fresh = eng.new_memory()  # nothing folded yet: the initial state, in float16
    assert fresh.doc_packed is None and torch.equal(eng.from_bytes(eng.to_bytes(fresh)).doc_state, fresh.doc_state)
    # entities first named in one sentence still share one state, in memory and in the file
    shared = [e for e in back.entities if any(o is not e and o.state is e.state for o in back.entities)]
    assert len(shared) == len([e for e in whole.entities if any(o is not e and o.state is e.state
                                                                 for o in whole.entities)])
    full = _engine(tok, 16)
    plain = full.flush(full.write(SAMPLE_TEXT))
    assert whole.state_bytes() < plain.state_bytes() and len(blob) < len(full.to_bytes(plain))
    # the quantized values are what the full-precision memory holds, to within half a step
    for q, f in zip(whole.paragraphs, plain.paragraphs):
        step = q.packed.step.float().repeat_interleave(group_of(q.state.shape[-1]), -1).reshape(q.state.shape)
        assert ((q.state.float() - f.state.float()).abs() <= step / 2 + 1e-2 * step + 1e-3).all()
    assert isinstance(eng.recall(back, index=0).text, str)


def test_a_memory_of_other_bits_is_refused_naming_both(tok):
    four, eight, full = _engine(tok, 4), _engine(tok, 8), _engine(tok, 16)
    blob = four.to_bytes(four.write(SAMPLE_TEXT))
    with pytest.raises(MemoryFileError, match="'bits': 4.*'bits': 8"):
        eight.from_bytes(blob)
    with pytest.raises(MemoryFileError, match="memory_layout"):
        full.from_bytes(blob)
    assert full.identity["memory_layout"].get("bits") is None  # float16 memories keep their old identity


def test_a_tampered_quantized_slot_is_refused(tok):
    import json
    import struct

    eng = _engine(tok, 4)
    blob = eng.to_bytes(eng.write(SAMPLE_TEXT))
    (n,) = struct.unpack("<Q", blob[:8])
    raw = json.loads(blob[8:8 + n])
    meta = json.loads(raw["__metadata__"]["r3mem"])
    from r3mem.memfile import _checksum

    def forged(edit):
        m = json.loads(json.dumps(meta))
        edit(m)
        m.pop("checksum")
        m["checksum"] = _checksum(m, st_load(blob))
        head = json.dumps(dict(raw, __metadata__={"r3mem": json.dumps(m)})).encode()
        head += b" " * (-len(head) % 8)
        return struct.pack("<Q", len(head)) + head + blob[8 + n:]

    # claims another shape than its codes have
    with pytest.raises(MemoryFileError, match=r"inconsistent header \(slot slot.0.codes has shape"):
        eng.from_bytes(forged(lambda m: m["paragraphs"][0]["shape"].__setitem__(-1, 20)))
    with pytest.raises(MemoryFileError, match=r"inconsistent header \(doc_state.codes has shape"):
        eng.from_bytes(forged(lambda m: m["doc_state"]["shape"].__setitem__(-2, 5)))
    with pytest.raises(MemoryFileError, match=r"inconsistent header \(doc_state: bits 3"):
        eng.from_bytes(forged(lambda m: m["doc_state"].__setitem__("bits", 3)))
