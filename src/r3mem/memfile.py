"""The memory file: safetensors tensors + a JSON header that makes the file self-checking.

The header records the format version, the base model id, the adapter hash and a sha256 checksum over
the header and every tensor. Every check runs on the raw bytes *before* a Memory is built, so a bad
file is refused whole: nothing is half-loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from r3mem import __version__
from r3mem.io import atomic_write_bytes, sha256_hex
from r3mem.memory import Memory, Slot, Snapshot, WritePolicy
from r3mem.quant import BITS as QUANT_BITS
from r3mem.quant import Packed, dequantize, group_of

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MemoryFileError",
    "IdentityMismatch",
    "KeysMismatch",
    "MemorySpec",
    "check_memory",
    "encode_memory",
    "decode_memory",
    "save_memory",
    "load_memory",
]

FORMAT = "r3mem-memory"
# 2: memories stored in 16-bit (`memory_dtype`), key/value memories; version 1 files (float32) are refused.
# 3: slots carry retrieval keys (`keys.py`): dense keys as one [slots, KEY_DIM] tensor per level, term counts
#    in the slot's header entry, the key encoder in the identity. Version 2 files load as memories without keys.
#    Quantized slots (`memory_bits` < 16, in the identity's memory layout) store codes, minima and steps.
# 4: the memory's write policy (levels, slot ratios) in the header; version 2-3 files load without one (the
#    engine's default policy at their next write, as they were written).
# 5: with `memory_bits` < 16 the document state is quantized too (codes, minima, steps; `doc_state` in the
#    header gives bits and shape), the identity's layout says so (`doc_bits`): a quantized memory of an older
#    version (float16 document state) is another layout.
# 6: the document chain (`doc_chain`, int64 per folded segment) and snapshots of the document state every
#    `snapshot_every` segments (`snap.N`, quantized like the document state; `snapshots` in the header), and
#    `snapshot_every` in the policy. Version 2-5 files load with no chain (their rebuilds refold from the start).
FORMAT_VERSION = 6
OLDEST_READABLE = 2


class MemoryFileError(ValueError):
    """A memory file is unreadable, corrupted, or belongs to another model/adapter/version."""


class IdentityMismatch(MemoryFileError):
    """A well-formed memory file written by another engine: another base model, adapter, memory layout
    (levels, precision) or key encoder. Its tensors are not read; a store that keeps the text it was
    written from can rebuild it (`ChatAgent`)."""


class KeysMismatch(IdentityMismatch):
    """The memory's slots were keyed by another key encoder (or by none) than this engine's."""


def _tensors(mem: Memory) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors to store and, per slot (paragraphs then entities), the name of its state. Slots that
    share one state (entities first named in the same sentence) share one stored tensor."""
    t = {"pending_ids": torch.tensor(mem.pending_ids, dtype=torch.int64)}
    t.update(_state_tensors("doc_state", mem.doc_state, mem.doc_packed))
    if mem.doc_chain is not None:
        t["doc_chain"] = torch.tensor(mem.doc_chain, dtype=torch.int64)
    for snap in mem.snapshots:  # copies: the last snapshot may be the document state itself (a file stores both)
        t.update({k: v.clone() for k, v in _state_tensors(f"snap.{snap.n_segments}", snap.state, snap.packed).items()})
    names: list[str] = []
    seen: dict[int, str] = {}
    for s in mem.paragraphs + mem.entities:
        name = seen.setdefault(id(s.state), f"slot.{len(seen)}")
        t.update(_state_tensors(name, s.state, s.packed))
        names.append(name)
    for level, slots in (("paragraph", mem.paragraphs), ("entity", mem.entities)):
        if slots and all(s.dense is not None for s in slots):
            t[f"dense.{level}"] = torch.stack([s.dense for s in slots])
    return {k: v.detach().to("cpu").contiguous() for k, v in t.items()}, names


def _state_tensors(name: str, state: torch.Tensor, packed: Packed | None) -> dict[str, torch.Tensor]:
    """A state as stored: itself, or (quantized) only its codes (`quant.py`); loading dequantizes them."""
    if packed is None:
        return {name: state}
    return {f"{name}.codes": packed.codes, f"{name}.low": packed.low, f"{name}.step": packed.step}


def _checksum(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    parts = [json.dumps(header, sort_keys=True, ensure_ascii=True).encode()]
    for name in sorted(tensors):
        t = tensors[name]
        parts.append(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        parts.append(t.numpy().tobytes() if t.numel() else b"")
    return sha256_hex(*parts)


def _slot_meta(s: Slot, state: str) -> dict[str, Any]:
    return {"level": s.level, "key": s.key, "start": s.start, "end": s.end, "n_tokens": s.n_tokens,
            "parent": s.parent, "mentions": [list(m) for m in s.mentions], "state": state,
            **({"terms": s.terms} if s.terms is not None else {}),
            **_bits_meta(s.packed)}


def _bits_meta(p: Packed | None) -> dict[str, Any]:
    """The header entry of a quantized state (bits, shape); empty for a float one."""
    return {"bits": p.bits, "shape": list(p.shape)} if p is not None else {}


def encode_memory(mem: Memory, identity: dict[str, Any]) -> bytes:
    tensors, names = _tensors(mem)
    n_par = len(mem.paragraphs)
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "r3mem_version": __version__,
        **identity,
        "pending_text": mem.pending_text, "offset": mem.offset, "n_tokens": mem.n_tokens, "n_segments": mem.n_segments,
        "policy": mem.policy.to_dict() if mem.policy is not None else None,
        "doc_state": _bits_meta(mem.doc_packed) or None,
        "snapshots": [{"n_segments": p.n_segments, **_bits_meta(p.packed)} for p in mem.snapshots],
        "paragraphs": [_slot_meta(s, n) for s, n in zip(mem.paragraphs, names[:n_par])],
        "entities": [_slot_meta(s, n) for s, n in zip(mem.entities, names[n_par:])],
    }
    header["checksum"] = _checksum(header, tensors)
    return st_save(tensors, metadata={"r3mem": json.dumps(header, ensure_ascii=True)})


def _read_header(data: bytes, name: str) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise MemoryFileError(f"{name}: truncated (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise MemoryFileError(f"{name}: truncated or not a memory file (header of {n} bytes, file of {len(data)})")
    try:
        raw = json.loads(data[8:8 + n])
        meta = json.loads(raw["__metadata__"]["r3mem"])
        ends = [int(v["data_offsets"][1]) for k, v in raw.items() if k != "__metadata__"]
        if not isinstance(meta, dict):
            raise TypeError("header is not a mapping")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        # Any structural defect (fuzzed bytes included) is one clear refusal, never a crash.
        raise MemoryFileError(f"{name}: not an r3mem memory file (no valid r3mem header)") from None
    return meta, 8 + n + max(ends, default=0)


def _check_identity(meta: dict[str, Any], identity: dict[str, Any], name: str) -> None:
    if meta.get("format") != FORMAT:
        raise MemoryFileError(f"{name}: not an r3mem memory file (format {meta.get('format')!r})")
    v = meta.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise MemoryFileError(
            f"{name}: format version {v} is newer than this r3mem supports ({FORMAT_VERSION}); upgrade r3mem"
        )
    if v < OLDEST_READABLE:
        raise MemoryFileError(
            f"{name}: format version {v} is no longer supported (this r3mem reads versions {OLDEST_READABLE}-"
            f"{FORMAT_VERSION}); write the text again to make a new memory"
        )
    for key in identity:
        if meta.get(key) == identity[key]:
            continue
        if key == "keys":
            theirs, ours = (f"keyed by {k!r}" if k else "without retrieval keys"
                            for k in (meta.get(key), identity[key]))
            hint = "; load it with rebuild_keys=True to key it again" if identity[key] else ""
            raise KeysMismatch(f"{name}: slots written {theirs}, this engine writes them {ours}{hint}")
        raise IdentityMismatch(f"{name}: written with {key}={meta.get(key)!r}, but this model has {identity[key]!r}")


@dataclass(frozen=True)
class MemorySpec:
    """What an engine can read: a state is `shape` with any number of memory tokens (axis -2) in
    1..`max_slot` (the document state: exactly `doc_tokens`), of `dtype`; token ids below `vocab`."""

    shape: tuple[int, ...]
    doc_tokens: int
    max_slot: int
    dtype: torch.dtype
    vocab: int
    key_dim: int | None = None  # every slot has a dense key of this size (None: slots have no keys)


def check_memory(mem: Memory, spec: MemorySpec, name: str = "memory") -> Memory:
    """`mem` if every tensor fits the engine; one error naming the first that does not otherwise.

    A memory whose checksum is right can still be unusable (edited and re-summed, or written by
    code with another layout): refusing it here keeps every later write and recall from failing."""
    _check_state(mem.doc_state, spec, f"{name}: doc_state", (spec.doc_tokens, spec.doc_tokens))
    for snap in mem.snapshots:
        _check_state(snap.state, spec, f"{name}: document snapshot at segment {snap.n_segments}",
                     (spec.doc_tokens, spec.doc_tokens))
    for level, slots in (("paragraph", mem.paragraphs), ("entity", mem.entities)):
        for i, s in enumerate(slots):
            _check_state(s.state, spec, f"{name}: {level} slot {i}", (1, spec.max_slot))
            _check_keys(s, spec, f"{name}: {level} slot {i}")
    bad = next((t for t in mem.pending_ids if not 0 <= t < spec.vocab), None)
    if bad is not None:
        raise MemoryFileError(f"{name}: pending token id {bad} is outside the vocabulary (0..{spec.vocab - 1})")
    return mem


def _check_state(t: torch.Tensor, spec: MemorySpec, what: str, k_range: tuple[int, int]) -> None:
    """A state of the engine's shape (with `k_range` memory tokens), dtype and finite values."""
    want = spec.shape[:-2] + ("k",) + spec.shape[-1:]
    if t.dim() != len(spec.shape) or tuple(t.shape[:-2]) != spec.shape[:-2] or t.shape[-1] != spec.shape[-1]:
        raise MemoryFileError(f"{what} has shape {tuple(t.shape)}, this model reads {want}")
    if not k_range[0] <= t.shape[-2] <= k_range[1]:
        raise MemoryFileError(f"{what} has {t.shape[-2]} memory tokens, this model reads {k_range[0]}..{k_range[1]}")
    if t.dtype != spec.dtype:
        raise MemoryFileError(f"{what} is {str(t.dtype).removeprefix('torch.')}, this model stores "
                              f"{str(spec.dtype).removeprefix('torch.')}")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise MemoryFileError(f"{what} holds NaN or infinite values")


def _check_keys(s: Slot, spec: MemorySpec, what: str) -> None:
    """A slot keyed as the engine keys slots (or not keyed, for an engine without keys)."""
    if spec.key_dim is None:
        if s.dense is not None or s.terms is not None:
            raise KeysMismatch(f"{what} has retrieval keys, this engine keys no slots")
        return
    if s.dense is None or s.terms is None:
        raise KeysMismatch(f"{what} has no retrieval keys, this engine keys every slot")
    if tuple(s.dense.shape) != (spec.key_dim,) or s.dense.dtype != torch.float16:
        raise MemoryFileError(f"{what} has a {str(s.dense.dtype).removeprefix('torch.')} key of shape "
                              f"{tuple(s.dense.shape)}, this engine reads float16 ({spec.key_dim},)")
    if not torch.isfinite(s.dense).all():
        raise MemoryFileError(f"{what} key holds NaN or infinite values")


def _terms(m: dict[str, Any]) -> dict[str, int] | None:
    terms = m.get("terms")
    if terms is not None and not (isinstance(terms, dict) and all(
            isinstance(k, str) and type(c) is int and c > 0 for k, c in terms.items())):
        raise ValueError("slot terms must map strings to positive counts")
    return terms


def _packed(name: str, m: dict[str, Any], tensors: dict[str, torch.Tensor], what: str) -> Packed:
    """A quantized state's codes, checked against its header entry (`bits`, `shape`) before anything is
    computed; `what` names it in errors."""
    bits, shape = m["bits"], m["shape"]
    if bits not in QUANT_BITS[1:] or not isinstance(shape, list) or not shape or \
            not all(type(d) is int and d > 0 for d in shape) or group_of(shape[-1]) * bits % 8:
        raise ValueError(f"{what}: bits {bits!r} or shape {shape!r} is not a quantized state")
    codes, low, step = (tensors[f"{name}.{part}"] for part in ("codes", "low", "step"))
    want = {"codes": (tuple(shape[:-1]) + (shape[-1] * bits // 8,), torch.uint8),
            "low": (tuple(shape[:-1]) + (shape[-1] // group_of(shape[-1]),), torch.float16)}
    want["step"] = want["low"]
    for part, t in (("codes", codes), ("low", low), ("step", step)):
        if (tuple(t.shape), t.dtype) != want[part]:
            raise ValueError(f"{what}.{part} has shape {tuple(t.shape)} {t.dtype}, expected {want[part]}")
    if not (torch.isfinite(low).all() and torch.isfinite(step).all()):
        raise ValueError(f"{what}: quantization scales hold NaN or infinite values")
    return Packed(codes, low, step, bits, tuple(shape))


def _slots(metas: list[dict[str, Any]], tensors: dict[str, torch.Tensor], level: str,
           unpacked: dict[str, tuple[torch.Tensor, Packed]]) -> list[Slot]:
    out = []
    dense = tensors.get(f"dense.{level}")
    if dense is not None and (dense.dim() != 2 or dense.shape[0] != len(metas)):
        raise ValueError(f"dense.{level} has shape {tuple(dense.shape)} for {len(metas)} slots")
    for i, m in enumerate(metas):
        name = m["state"]
        if not isinstance(name, str) or not name.startswith("slot."):
            raise KeyError(f"slot state {name!r}")
        if name in tensors:
            state, packed = tensors[name], None
        elif f"{name}.codes" in tensors:
            if name not in unpacked:  # a state shared by several slots is dequantized once, and stays shared
                p = _packed(name, m, tensors, f"slot {name}")
                unpacked[name] = (dequantize(p), p)
            state, packed = unpacked[name]
        else:
            raise KeyError(f"slot state {name!r}")
        out.append(Slot(m["level"], m["key"], m["start"], m["end"], m["n_tokens"], state,
                        parent=m["parent"], mentions=[tuple(x) for x in m["mentions"]],
                        dense=None if dense is None else dense[i], terms=_terms(m), packed=packed))
    if any((s.dense is None) != (s.terms is None) for s in out):
        raise ValueError(f"{level} slots have dense keys without term counts or the other way round")
    return out


def _policy(d: Any) -> WritePolicy | None:
    if d is None:
        return None
    keys = {"levels", "paragraph_ratio", "entity_ratio"}
    if not isinstance(d, dict) or not keys <= set(d) <= keys | {"snapshot_every"} or not isinstance(d["levels"], list):
        raise ValueError(f"policy {d!r} is not a write policy")
    # Format 5 and older: no snapshot_every; such a memory has no chain and so takes no snapshots.
    return WritePolicy(tuple(d["levels"]), d["paragraph_ratio"], d["entity_ratio"],
                       d.get("snapshot_every", WritePolicy.snapshot_every))  # validated there


def _doc_state(m: Any, tensors: dict[str, torch.Tensor], name: str = "doc_state") -> tuple[torch.Tensor, Packed | None]:
    """The document state (or a snapshot of it, `name`) and, if it is stored quantized (header entry `m`:
    bits and shape; None or empty for a float one), its codes."""
    if not m:
        return tensors[name], None
    if not isinstance(m, dict) or set(m) != {"bits", "shape"}:
        raise ValueError(f"{name} entry {m!r} is not a quantized state")
    p = _packed(name, m, tensors, name)
    return dequantize(p), p


def _chain_and_snapshots(meta: dict[str, Any], tensors: dict[str, torch.Tensor]
                         ) -> tuple[list[int] | None, list[Snapshot]]:
    """The document chain (one hash per folded segment) and snapshots of a format-6 file; (None, []) for an
    older one, or for a memory first written by one (it has no chain, and so no snapshots). Snapshots must be
    in segment order within the folded segments."""
    if meta["format_version"] < 6 or ("doc_chain" not in tensors and not meta["snapshots"]):
        return None, []
    chain = tensors["doc_chain"]
    if chain.dtype != torch.int64 or chain.dim() != 1 or chain.numel() != meta["n_segments"]:
        raise ValueError(f"doc_chain has {chain.numel()} {chain.dtype} entries for {meta['n_segments']} segments")
    snaps, last = [], 0
    for m in meta["snapshots"]:
        n = m.get("n_segments") if isinstance(m, dict) else None
        if type(n) is not int or not last < n <= meta["n_segments"]:
            raise ValueError(f"snapshot {m!r} is not after the last one ({last}) within {meta['n_segments']} segments")
        state, packed = _doc_state({k: v for k, v in m.items() if k != "n_segments"}, tensors, f"snap.{n}")
        snaps.append(Snapshot(n, state, packed))
        last = n
    return chain.tolist(), snaps


def decode_memory(data: bytes, identity: dict[str, Any], name: str = "memory file") -> Memory:
    meta, expected_len = _read_header(data, name)
    _check_identity(meta, identity, name)
    if len(data) != expected_len:
        raise MemoryFileError(f"{name}: truncated or padded ({len(data)} bytes, expected {expected_len})")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types on malformed buffers
        raise MemoryFileError(f"{name}: corrupted tensor data ({e})") from None
    claimed = meta.pop("checksum", None)
    if claimed != _checksum(meta, tensors):
        raise MemoryFileError(f"{name}: checksum mismatch, the file was modified or corrupted")
    unpacked: dict[str, tuple[torch.Tensor, Packed]] = {}
    try:
        doc_state, doc_packed = _doc_state(meta.get("doc_state"), tensors)
        doc_chain, snapshots = _chain_and_snapshots(meta, tensors)
        return Memory(
            doc_state=doc_state,
            doc_packed=doc_packed,
            pending_ids=tensors["pending_ids"].tolist(),
            pending_text=meta["pending_text"],
            offset=meta["offset"],
            n_tokens=meta["n_tokens"],
            n_segments=meta["n_segments"],
            paragraphs=_slots(meta["paragraphs"], tensors, "paragraph", unpacked),
            entities=_slots(meta["entities"], tensors, "entity", unpacked),
            policy=_policy(meta.get("policy")),
            doc_chain=doc_chain,
            snapshots=snapshots,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise MemoryFileError(f"{name}: inconsistent header ({e})") from None


def save_memory(path: str | Path, mem: Memory, identity: dict[str, Any]) -> None:
    atomic_write_bytes(path, encode_memory(mem, identity))


def load_memory(path: str | Path, identity: dict[str, Any]) -> Memory:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MemoryFileError(f"{path}: cannot read ({e.strerror})") from None
    return decode_memory(data, identity, name=str(path))
