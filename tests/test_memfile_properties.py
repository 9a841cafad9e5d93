"""Property-based tests of the memory file codec and a short fuzz run of its parser."""

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3mem.memfile import MemoryFileError, decode_memory, encode_memory
from r3mem.memory import Memory, Slot, Snapshot

IDENTITY = {
    "base_model_id": "m",
    "adapter_hash": "h",
    "memory_layout": {"mode": "input", "num_mem_tokens": 2, "levels": ["document"]},
}

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def memories(draw):
    d = draw(st.integers(1, 8))
    def tensor(k):
        vals = draw(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=k * d, max_size=k * d))
        return torch.tensor(vals, dtype=torch.float32).view(1, k, d)
    def slot(level):
        k = draw(st.integers(1, 3))
        s = draw(st.integers(0, 1000))
        mentions = [
            tuple(sorted(draw(st.tuples(st.integers(0, 999), st.integers(0, 999)))))
            for _ in range(draw(st.integers(0, 2)))
        ]
        return Slot(level, draw(texts), s, s + draw(st.integers(0, 50)), draw(st.integers(0, 500)), tensor(k),
                    parent=draw(st.none() | st.integers(0, 5)), mentions=mentions)
    n_segments = draw(st.integers(0, 40))
    # A memory's chain: one hash per segment, or unknown (first written by a format-5 file) with no snapshots.
    chain = draw(st.none() | st.lists(st.integers(-2**63, 2**63 - 1), min_size=n_segments, max_size=n_segments))
    snaps = [] if chain is None else [Snapshot(n, tensor(2)) for n in sorted(draw(st.sets(
        st.integers(1, max(1, n_segments)), max_size=3))) if n <= n_segments]
    return Memory(doc_state=tensor(2), pending_ids=draw(st.lists(st.integers(0, 50000), max_size=10)),
                  pending_text=draw(texts), offset=draw(st.integers(0, 10**9)), n_tokens=draw(st.integers(0, 10**9)),
                  n_segments=n_segments,
                  paragraphs=[slot("paragraph") for _ in range(draw(st.integers(0, 3)))],
                  entities=[slot("entity") for _ in range(draw(st.integers(0, 3)))], doc_chain=chain, snapshots=snaps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memories())
def test_round_trip_is_exact(mem):
    back = decode_memory(encode_memory(mem, IDENTITY), IDENTITY)
    assert torch.equal(back.doc_state, mem.doc_state)
    assert (back.pending_ids, back.pending_text, back.offset, back.n_tokens, back.n_segments, back.doc_chain) == \
        (mem.pending_ids, mem.pending_text, mem.offset, mem.n_tokens, mem.n_segments, mem.doc_chain)
    assert [s.n_segments for s in back.snapshots] == [s.n_segments for s in mem.snapshots]
    assert all(torch.equal(a.state, b.state) for a, b in zip(back.snapshots, mem.snapshots))
    for a, b in zip(back.paragraphs + back.entities, mem.paragraphs + mem.entities):
        assert (a.level, a.key, a.start, a.end, a.n_tokens, a.parent, a.mentions) == \
            (b.level, b.key, b.start, b.end, b.n_tokens, b.parent, b.mentions)
        assert torch.equal(a.state, b.state)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_or_cut_is_refused(data):
    mem = Memory(doc_state=torch.arange(8, dtype=torch.float32).view(1, 2, 4), pending_text="tail",
                 paragraphs=[Slot("paragraph", "p0", 0, 10, 12, torch.ones(1, 3, 4))])
    blob = encode_memory(mem, IDENTITY)
    kind = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = bytearray(blob)
        bad[i] ^= 1 << bit
        bad = bytes(bad)
    elif kind == "cut":
        bad = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        bad = blob + data.draw(st.binary(min_size=1, max_size=16))
    try:
        decoded = decode_memory(bad, IDENTITY)
    except MemoryFileError:
        return
    # A change that still decodes may only touch JSON whitespace padding: content must be identical.
    assert torch.equal(decoded.doc_state, mem.doc_state) and decoded.pending_text == mem.pending_text
    assert all(torch.equal(a.state, b.state) for a, b in zip(decoded.paragraphs, mem.paragraphs))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_parser_fuzz_random_bytes_only_raise_memory_file_error(data):
    with pytest.raises(MemoryFileError):
        decode_memory(data, IDENTITY)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=256), st.integers(0, 2**20))
def test_parser_fuzz_structured_header(payload, n):
    data = struct.pack("<Q", n) + payload
    with pytest.raises(MemoryFileError):
        decode_memory(data, IDENTITY)


@pytest.mark.parametrize("entry", [{"dtype": "F32"}, {"data_offsets": "x"}, {"data_offsets": []}, "notadict"])
def test_malformed_tensor_entries_in_header_are_refused(entry):
    """Regression: a bit flip that renamed 'data_offsets' once escaped as a KeyError."""
    import json

    header = json.dumps(
        {"__metadata__": {"r3mem": json.dumps({"format": "r3mem-memory"})}, "doc_state": entry}
    ).encode()
    with pytest.raises(MemoryFileError, match="not an r3mem memory file"):
        decode_memory(struct.pack("<Q", len(header)) + header, IDENTITY)
