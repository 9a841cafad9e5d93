"""The R³Mem model: a frozen causal LM + LoRA adapters + virtual memory tokens, run in two directions.

Forward (compress):  [read memory] + segment + [write tokens]  ->  new memory (write outputs)
Backward (expand):   [memory] + <expand> + [query] + <sep>       ->  the original text, token by token

Every sequence is assembled in "logical" order (parts right-padded), then packed so that padding sits
on the left (the layout causal LMs batch correctly), and hidden states are unpacked back to logical
order. Tokens therefore get the same positions whatever else is in the batch.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from r3mem import kv
from r3mem.backbone import decoder_layers, inner_model
from r3mem.config import R3MemConfig
from r3mem.coupling import Coupling
from r3mem.memory_tokens import VirtualMemory
from r3mem.merged import MergedWeights
from r3mem.tokens import IGNORE_INDEX, lm_labels

__all__ = ["R3MemModel", "Compressed", "Sampling", "GREEDY", "COMPRESS", "EXPAND", "WRITE", "QUERY", "SEP"]

COMPRESS, EXPAND, WRITE = "compress", "expand", "write"
QUERY, EXPAND_MARK, SEP = 0, 1, 2  # marker indices in VirtualMemory.markers


@dataclass(frozen=True)
class Sampling:
    """How each new token is chosen: the argmax (temperature 0), or drawn from the top-p nucleus of the
    distribution at `temperature` with `generator`."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


GREEDY = Sampling()


class _Pass(NamedTuple):
    """What one decoder pass (`_run`) returns: hidden states [B, T, d] (float32), the call context (layer
    captures), the key/value cache, the attention mask over cache + tokens [B, k + T] and the tokens'
    positions [B, T]."""

    hidden: torch.Tensor
    ctx: _CallContext
    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor


class Compressed(NamedTuple):
    """What `compress` returns: the new memory, and the LM loss of the segment's tokens (a sum over
    `n_scored` tokens; zeros without labels)."""

    state: torch.Tensor
    lm_loss: torch.Tensor
    n_scored: torch.Tensor


@dataclass
class _CallContext:
    direction: str
    read_mask: torch.Tensor | None = None  # [B, T] packed positions of the read tokens
    layer_state: torch.Tensor | None = None  # [B, L, k, d] per-layer memory (layerwise mode)
    capture: int = 0  # number of trailing write positions to record per layer
    write_mask: torch.Tensor | None = None  # [T, 1] 1 on the trailing write positions (write adapter on)
    captured: list[torch.Tensor] = field(default_factory=list)


def _pack_left(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move padding to the left of each row, keeping real positions in order."""
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # pads (0) first
    xp = x.gather(1, order.unsqueeze(-1).expand_as(x))
    return xp, mask.gather(1, order), order


def _unpack(h: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(h)
    return out.scatter_(1, order.unsqueeze(-1).expand_as(h), h)


# Write tokens per pass of `slots_from_text`: on a CPU a pass of a few tokens costs a read of all the
# weights, so slots share passes; past a few hundred the block mask's unused attention starts to cost.
SLOT_TOKENS_PER_PASS = 256
# Tokens per pass of `fold_local`'s text: its pieces read only themselves, so longer passes only add
# attention that the block mask throws away.
LOCAL_TEXT_TOKENS = 512
DRAFT_LOOKAHEAD = 32  # draft tokens fed per pass of `reconstruct_drafted` (a slot holds at most 96 text tokens)


def _realign(guess: list[int], d: int, said: int, reach: int = 4) -> int:
    """Where the draft goes on after the model said token `said` where the draft had `guess[d]`: after it
    when they agree; after its next occurrence within `reach` tokens (the model skipped draft tokens);
    else after `guess[d]` (the model said another token in its place)."""
    for j in range(d, min(d + 1 + reach, len(guess))):
        if guess[j] == said:
            return j + 1
    return d + 1


def _exclusive(fn):
    """Run a model operation holding the model's lock: the active LoRA direction and the call context
    are state of the shared PEFT layers, so two passes must never interleave (threads of a service)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self._lock, self._autocast():
            return fn(self, *args, **kwargs)

    return wrapper


class R3MemModel(nn.Module):
    """A frozen causal LM (`lm`) wrapped with LoRA adapters, memory tokens (`memory`) and, in
    reversible variant B, invertible couplings (`couplings`); runs in two directions.

    Shapes (B = batch, T = tokens, k = memory tokens, d = hidden, L = layers, H = kv heads, hd = head dim):

        state (memory)   [B, levels, k, d]     input / layerwise mode (levels = 1, or 1 + L)
                         [B, L, 2, H, k, hd]   kv mode: keys and values, read as a cache prefix
        compress         embeds [B, T, d], mask [B, T], state -> Compressed(new state with k = n_write, loss sum, n)
        teacher_force    state, target [B, T] -> (hidden predicting each target token [B, T, d], labels [B, T])
        score            state, query [B, T] -> the same, forward: the memory as the question's context
        reconstruct      state -> the memory's text as token ids, one list per row (`reconstruct_drafted`:
                         one memory, with a guess of its text fed ahead)
        continue_text    state, prompt [B, T] -> generated ids after the memory and the prompt

    The model keeps no state between calls: memories go in and come out as tensors. Within a call the
    active adapter and the hooks' context are shared state of the wrapped layers, so every pass holds
    the model's re-entrant lock (`_run`, the whole of each decoding loop, `adapters_disabled`): one engine may be
    used from several threads, its passes run one at a time.
    """

    def __init__(self, base: nn.Module, cfg: R3MemConfig) -> None:
        super().__init__()
        self.cfg = cfg
        for p in base.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(cfg.seed)
        names = (COMPRESS, EXPAND) if cfg.reversible_mode == "adapters" else ("shared",)
        names += (WRITE,) if cfg.write_adapter else ()
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.target_modules) if cfg.target_modules else None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # peft initialises LoRA A from the global RNG
            peft_model = get_peft_model(base, lora, adapter_name=names[0])
            for n in names[1:]:
                peft_model.add_adapter(n, lora)
        object.__setattr__(self, "_peft", peft_model)  # adapter bookkeeping only; not a submodule
        self.adapter_names = names
        self.lm = base  # LoRA layers are injected in place
        self._tuners = [m for m in base.modules() if isinstance(m, BaseTunerLayer)]
        for n, p in self.lm.named_parameters():
            p.requires_grad_(".lora_" in n)
            if cfg.compute_dtype == "bfloat16" and not p.requires_grad:
                # The frozen base weights in bfloat16: half the memory traffic of a decoding step (1.7x
                # faster recall on 2 CPU cores); adapters, memory tokens and optimiser stay float32.
                p.data = p.data.to(torch.bfloat16)
        # Passes without gradient compute with each direction merged into a copy of the weights (`merged.py`);
        # not with a write adapter, whose update is split by position (`_write_split_hook`).
        self._merged = MergedWeights(self._tuners) if cfg.compute_dtype == "bfloat16" and not cfg.write_adapter \
            else None
        self.body = inner_model(base)
        hidden = base.config.hidden_size
        layers = decoder_layers(base)
        emb_rms = base.get_input_embeddings().weight.detach().pow(2).mean().sqrt().item()
        self.kv = cfg.memory_mode == "kv"
        self.memory = VirtualMemory(hidden, cfg.num_mem_tokens, cfg.max_slot_tokens, len(layers),
                                    cfg.memory_mode == "layerwise", emb_rms, gen, cfg.layer_gate_init,
                                    read_map=not self.kv)
        # The body's own rotary module, referenced (not a submodule of ours: it is already the body's).
        object.__setattr__(self, "_rot", kv.rotary_of(self.body) if self.kv else None)
        self.couplings = (nn.ModuleList(Coupling(hidden, cfg.coupling_hidden, gen) for _ in layers)
                          if cfg.reversible_mode == "coupling" else None)
        self._ctx: _CallContext | None = None
        self._bare = False  # inside `adapters_disabled`
        self._lock = threading.RLock()
        for i, layer in enumerate(layers):
            layer.register_forward_hook(self._layer_hook(i))
        for m in self._tuners if cfg.write_adapter else ():
            m.lora_B[COMPRESS].register_forward_hook(self._write_split_hook(text=True))
            m.lora_B[WRITE].register_forward_hook(self._write_split_hook(text=False))

    # ----- adapters and hooks -------------------------------------------------------------
    def _set_direction(self, direction: str, write: bool = False) -> None:
        # Switch the active LoRA without peft's set_adapter, which would flip requires_grad and
        # cut gradients to the adapter used earlier in the same training step. `write`: the write
        # adapter is active beside compress (`_write_split_hook` splits the positions).
        if self._bare:
            return
        name = direction if direction in self.adapter_names else self.adapter_names[0]
        if self._merged is not None:
            if not torch.is_grad_enabled():
                self._merged.use(name)
                return
            self._merged.use(None)  # training: LoRA on the base weights, so that its gradients flow
        names = [name, WRITE] if write else [name]
        for m in self._tuners:
            m._active_adapter = names

    def _write_split_hook(self, text: bool):
        """On a LoRA B output [B, T, out]: keep the compress adapter's update on the text positions
        and the write adapter's on the trailing write positions (`_CallContext.write_mask`)."""
        def hook(module, args, output):
            ctx = self._ctx
            if ctx is None or ctx.write_mask is None:
                return None
            on_write = ctx.write_mask.to(output.dtype)
            return output * (1 - on_write if text else on_write)
        return hook

    @contextlib.contextmanager
    def adapters_disabled(self):
        """Run the bare base model: LoRA off and no coupling/memory hooks (holding the model's lock). No
        active adapter rather than peft's `disable_adapter`, which resets which LoRA tensors require grad."""
        with self._lock, self._autocast():
            if self._merged is not None:
                self._merged.use(None)
            active = [m._active_adapter for m in self._tuners]
            for m in self._tuners:
                m._active_adapter = []
            outer, self._bare = self._bare, True  # passes inside (`_run`) keep LoRA off too
            try:
                yield
            finally:
                self._bare = outer
                for m, a in zip(self._tuners, active):  # as before: LoRA on the base weights
                    m._active_adapter = a

    def _autocast(self):
        """bfloat16 autocast when `compute_dtype` asks for it (hidden states returned in float32)."""
        if self.cfg.compute_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.lm.get_input_embeddings().weight.device.type, dtype=torch.bfloat16)

    def _layer_hook(self, i: int):
        def hook(module, args, output):
            ctx = self._ctx
            if ctx is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            if ctx.layer_state is not None and ctx.read_mask is not None:
                add = torch.zeros_like(h)
                add[ctx.read_mask] = ctx.layer_state[:, i].reshape(-1, h.shape[-1]).to(h.dtype)
                h = h + self.memory.layer_gate[i] * add
            if self.couplings is not None:
                c = self.couplings[i]
                h = c(h) if ctx.direction == COMPRESS else c.inverse(h)
            if ctx.capture:
                ctx.captured.append(h[:, -ctx.capture:])
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.lm.get_output_embeddings()
        return head(hidden.to(head.weight.dtype))

    @property
    def spread(self) -> bool:
        """kv memory with `memory_positions: spread` on a rotary model (absolute-position models read
        memory as a prefix: their keys carry no position, and positions cannot be negative)."""
        return self.kv and self.cfg.memory_positions == "spread" and self._rot is not None

    @staticmethod
    def spread_positions(n: torch.Tensor, k: int) -> torch.Tensor:
        """[B] text lengths -> [B, k] positions of k memory tokens over a text at 0..n-1: token j at the
        end of its share of the text, floor((j + 1) n / k) - 1 (>= 0)."""
        j = torch.arange(1, k + 1, device=n.device)
        return ((j[None] * n[:, None].long()) // k - 1).clamp(min=0)

    def _continue_at(self, state: torch.Tensor | None) -> int:
        """Position of the first token read after a kv memory of a document segment (compress with a
        previous memory, LM continuation): after the memory (prefix) or after the segment it came from."""
        if state is None:
            return 0
        return self.cfg.segment_len if self.spread else kv.mem_len(state)

    def _reader_start(self, state: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor | int:
        """Position of the first token of an expansion ([marker, query, sep] + target). Spread: the
        target's first token at 0, where the memory's text began (the prefix at negative positions)."""
        if self.spread:
            return -prefix_mask.sum(1, keepdim=True)
        return kv.mem_len(state) if self.kv else 0

    @_exclusive
    def _run(self, x: torch.Tensor, mask: torch.Tensor, direction: str, state: torch.Tensor | None,
             n_read: int, capture: int = 0, use_cache: bool = False, past: torch.Tensor | None = None,
             start: torch.Tensor | int | None = None, tail_positions: torch.Tensor | None = None,
             write_tail: int = 0, past_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None):
        """Pack, run the decoder stack once, unpack: a `_Pass` (hidden [B, T, d], ctx, cache, mask over cache +
        tokens [B, k + T], positions [B, T]). x [B, T, d] embeddings, mask [B, T].

        `past` is a kv memory [B, L, 2, H, k, hd] read as a cache prefix, and the returned mask covers
        the memory too. Real tokens take positions `start` ([B, 1] or int; default: k, after the
        memory), `start + 1`, ...; `tail_positions` [B, n] overrides those of the last n tokens (write
        tokens placed over the text they summarise). `past_mask` [B, k]: 0 on padding memory tokens (rows
        of memories with fewer tokens, padded to share a batch). `write_tail`: the last n tokens are write tokens
        (they take the write adapter when the model has one and the direction is compress). `attn_mask`
        [B, 1, T, k + T] (`_block_mask`): which tokens read which, instead of causal attention over all
        (tokens unpadded).
        """
        xp, mp, order = _pack_left(x, mask)
        write_mask = None
        if write_tail and direction == COMPRESS and WRITE in self.adapter_names:  # packing keeps them last
            write_mask = torch.zeros(x.shape[1], 1, dtype=x.dtype, device=x.device)
            write_mask[-write_tail:] = 1
        cache, k = None, 0
        if past is not None:
            k = kv.mem_len(past)
            cache = kv.to_cache(past, x.dtype)
            use_cache = True
        read = torch.zeros_like(mask, dtype=torch.bool)
        read[:, :n_read] = True
        ctx = _CallContext(
            direction,
            read_mask=read.gather(1, order),
            layer_state=state[:, 1:] if state is not None and not self.kv and self.memory.levels > 1 else None,
            capture=capture,
            write_mask=write_mask,
        )
        pos = (k if start is None else start) + (mp.cumsum(-1) - 1).clamp(min=0)
        if tail_positions is not None:  # the last logical tokens are real: packing keeps them last
            pos = torch.cat([pos[:, :-tail_positions.shape[1]], tail_positions.to(pos.dtype)], 1)
        self._set_direction(direction, write=write_mask is not None)
        self._ctx = ctx
        try:
            head = mp.new_ones(mp.shape[0], k) if past_mask is None else past_mask.to(mp.dtype)
            full = torch.cat([head, mp], 1) if k else mp
            out = self.body(inputs_embeds=xp, attention_mask=full if attn_mask is None else attn_mask, position_ids=pos,
                            past_key_values=cache, use_cache=use_cache)
        finally:
            self._ctx = None
        hidden = out.last_hidden_state.float()  # float32 whatever the compute dtype
        return _Pass(_unpack(hidden, order), ctx, out.past_key_values, full, pos)

    # ----- forward direction: compression ----------------------------------------------------
    def initial_state(self, batch: int) -> torch.Tensor:
        """M_0: [B, levels, m, d], or in kv mode [B, L, 2, H, m, hd], the learned initial memory
        tokens run through the compress direction (their keys at positions 0..m-1, or spread over a
        segment's span like every document memory)."""
        if not self.kv:
            return self.memory.initial(batch)
        x = self.memory.init_mem.unsqueeze(0).to(self.lm.get_input_embeddings().weight.dtype)
        m = torch.ones(1, x.shape[1], dtype=torch.long, device=x.device)
        tail = self.spread_positions(m.new_tensor([self.cfg.segment_len]), x.shape[1]) if self.spread else None
        cache = self._run(x, m, COMPRESS, None, 0, use_cache=True, tail_positions=tail, write_tail=x.shape[1]).cache
        return kv.from_cache(cache, x.shape[1]).expand(batch, -1, -1, -1, -1, -1)

    @property
    def store_dtype(self) -> torch.dtype:
        """dtype memories are stored in (`memory_dtype`); every reader casts back to compute dtype."""
        return getattr(torch, self.cfg.memory_dtype)

    def slot_prior(self, batch: int) -> torch.Tensor | None:
        """The memory a slot (paragraph, entity) is compressed from: none in kv mode (the slot reads
        only its own text), M_0 otherwise."""
        return None if self.kv else self.initial_state(batch)

    def compress(self, embeds: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None, n_write: int,
                 labels: torch.Tensor | None = None) -> Compressed:
        """One segment: returns (new state [B,levels,n_write,d], LM loss sum, number of scored tokens).

        `labels` (the segment's token ids, IGNORE_INDEX for padding) makes the read memory and each token
        predict the next token, so the memory is trained to help language modelling. In kv mode the
        new state is [B, L, 2, H, n_write, hd] and `state` (None: no memory) is the cache prefix.
        """
        if self.kv:
            return self._compress_kv(embeds, mask, state, n_write, labels)
        B, k = embeds.shape[0], state.shape[2]  # state [B, levels, k, d]; embeds [B, T, d]
        ones = mask.new_ones
        x = torch.cat([state[:, 0].to(embeds.dtype), embeds, self.memory.write_tokens(B, n_write).to(embeds.dtype)], 1)
        m = torch.cat([ones(B, k), mask, ones(B, n_write)], 1)  # x [B, k + T + n_write, d], m the same without d
        hidden, ctx, _, _, _ = self._run(x, m, COMPRESS, state, k, capture=n_write if self.memory.levels > 1 else 0,
                                         write_tail=n_write)
        new = self.memory.to_read(hidden[:, -n_write:]).unsqueeze(1)  # [B, 1, n_write, d]
        if ctx.captured:  # layerwise: per layer [B, n_write, d] -> new [B, 1 + L, n_write, d]
            new = torch.cat([new, torch.stack(ctx.captured, 1)], 1)
        loss, n = hidden.new_zeros(()), hidden.new_zeros(())
        if labels is not None:
            T = embeds.shape[1]
            loss, n = self.token_nll(hidden[:, k - 1:k - 1 + T], labels)
        return Compressed(new, loss, n)

    def _compress_kv(self, embeds: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None, n_write: int,
                     labels: torch.Tensor | None) -> Compressed:
        """[memory as cache] + <start> + segment + [write tokens] -> the write tokens' keys/values.

        The <start> marker predicts the segment's first token from the memory alone; it sits at
        position o (`_continue_at`), the segment at o+1..o+n. Prefix: the write tokens follow the
        segment and their keys are moved to 0..n_write-1. Spread: write token j sits at o + 1 + the
        end of its share of the segment, and keys are moved so the segment would be at 0..n-1.
        """
        hidden, _, new = self._kv_pass(embeds, mask, state, n_write)
        loss, n = hidden.new_zeros(()), hidden.new_zeros(())
        if labels is not None:
            loss, n = self.token_nll(hidden[:, :embeds.shape[1]], labels)
        return Compressed(new, loss, n)

    def _kv_pass(self, embeds: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None, n_write: int):
        """`_compress_kv`'s pass: (hidden [B, 1 + T + n_write, d] from the segment's first token on, the
        cache, the new memory [B, L, 2, H, n_write, hd])."""
        B = embeds.shape[0]
        ones = mask.new_ones
        x = torch.cat([self.memory.marker(B, SEP).to(embeds.dtype), embeds,
                       self.memory.write_tokens(B, n_write).to(embeds.dtype)], 1)
        m = torch.cat([ones(B, 1), mask, ones(B, n_write)], 1)
        o = self._continue_at(state)
        tail = o + 1 + self.spread_positions(mask.sum(1), n_write) if self.spread else None
        hidden, _, cache, _, _ = self._run(x, m, COMPRESS, None, 0, use_cache=True, past=state, start=o,
                                           tail_positions=tail, write_tail=n_write)
        first = mask.new_full((B,), o + 1) if self.spread else o + 1 + mask.sum(1)
        return hidden, cache, kv.reposition(self._rot, kv.from_cache(cache, n_write), -first)

    def compress_keeping_text(self, embeds: torch.Tensor, state: torch.Tensor | None,
                              n_write: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One segment of one memory (embeds [1, T, d], no padding) folded as `compress` folds it, keeping
        the pass's keys/values of the text: (new state [1, L, 2, H, n_write, hd], text [L, 2, H, T, hd],
        the position of its first token). `slots_from_text` writes slots from the text: the one-pass
        hierarchy."""
        if not self.kv or embeds.shape[0] != 1:
            raise ValueError("compress_keeping_text: needs memory_mode 'kv' and one segment")
        new, (text,) = self._kv_pass_keeping_text(embeds, torch.ones(1, embeds.shape[1], dtype=torch.long,
                                                                     device=embeds.device), state, n_write)
        return new, text, self._continue_at(state) + 1

    def _kv_pass_keeping_text(self, embeds: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None,
                              n_write: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`_kv_pass` over embeds [B, T, d] (mask [B, T], right-padded): (the new memories [B, L, 2, H,
        n_write, hd], each row's text keys/values [L, 2, H, n_b, hd]). Packing puts a row's text just
        before its write tokens."""
        _, cache, new = self._kv_pass(embeds, mask, state, n_write)
        T = embeds.shape[1]
        text = kv.from_cache(cache, T + n_write)[..., :T, :]
        return new, [text[b, ..., T - n:, :] for b, n in enumerate(mask.sum(1).tolist())]

    def slots_from_text(self, pieces: list[tuple[torch.Tensor, int, int]]) -> list[torch.Tensor]:
        """One slot [L, 2, H, k, hd] per (text keys/values [L, 2, H, n, hd], position of its first token,
        memory tokens k): what `compress_in_pass` writes from that text as its pass saw it. Pieces share
        passes of up to `SLOT_TOKENS_PER_PASS` write tokens, each piece's reading only its own text
        (`_slots_packed`): a pass costs a read of the weights, whatever it holds."""
        if not pieces:
            return []
        start, out, chunk = self._start_entry(), [], []
        for piece in pieces:
            if chunk and sum(k for *_, k in chunk) + piece[2] > SLOT_TOKENS_PER_PASS:
                out += self._slots_packed(chunk, start)
                chunk = []
            chunk.append(piece)
        return out + self._slots_packed(chunk, start)

    def _start_entry(self) -> torch.Tensor:
        """The <start> entry [1, L, 2, H, 1, hd] every slot pass begins with, at `_continue_at(None)`: it
        reads nothing before it, so it is the same for every slot."""
        x = self.memory.marker(1, SEP).to(self.lm.get_input_embeddings().weight.dtype)
        m = torch.ones(1, 1, dtype=torch.long, device=x.device)
        return kv.from_cache(self._run(x, m, COMPRESS, None, 0, use_cache=True, start=self._continue_at(None)).cache, 1)

    def _block_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """[B, T, k + T] booleans (query reads key) -> the 4D mask the attention implementation takes."""
        if self.lm.config._attn_implementation == "sdpa":
            return allowed[:, None]
        low = torch.finfo(torch.float32).min
        return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, low)[:, None]

    def _slots_packed(self, pieces: list[tuple[torch.Tensor, int, int]], start: torch.Tensor) -> list[torch.Tensor]:
        """`slots_from_text` in one pass (B = 1): the pieces' <start> entries (the slot pass's, which reads
        nothing before it: one tensor, moved before each text) and texts form the cache, their write tokens
        the input, and a block mask lets each piece's write tokens read its own entries and, causally, each
        other, at the positions a slot pass gives them."""
        at, dev = self._continue_at(None), start.device
        entries, pos, shifts = [], [], []
        for t, first, k in pieces:
            n = t.shape[-2]
            entries += [kv.reposition(self._rot, start.float(), torch.tensor([first - 1 - at]))[0].to(t.dtype), t]
            rel = self.spread_positions(torch.tensor([n]), k)[0] if self.spread else n + torch.arange(k)
            pos.append(first + rel)
            shifts.append(first if self.spread else first + n)
        ks, piece = [k for *_, k in pieces], torch.arange(len(pieces))
        past_of = torch.repeat_interleave(piece, torch.tensor([1 + t.shape[-2] for t, _, _ in pieces]))
        of = torch.repeat_interleave(piece, torch.tensor(ks))  # the piece of each write token
        Q = len(of)
        causal = torch.arange(Q)[:, None] >= torch.arange(Q)[None]
        allowed = torch.cat([of[:, None] == past_of[None], (of[:, None] == of[None]) & causal], 1)[None].to(dev)
        x = torch.cat([self.memory.write_tokens(1, k) for k in ks], 1).to(self.lm.get_input_embeddings().weight.dtype)
        cache = self._run(x, torch.ones(1, Q, dtype=torch.long, device=dev), COMPRESS, None, 0, use_cache=True,
                          past=torch.cat(entries, -2)[None], start=0, tail_positions=torch.cat(pos)[None].to(dev),
                          write_tail=Q, attn_mask=self._block_mask(allowed)).cache
        slots = kv.from_cache(cache, Q)[0].split(ks, dim=-2)
        return [kv.reposition(self._rot, sl[None], torch.tensor([d]))[0] for sl, d in zip(slots, (-x for x in shifts))]

    def compress_with_slots(self, embeds: torch.Tensor, state: torch.Tensor | None, n_write: int,
                            spans: list[tuple[int, int, int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`compress_keeping_text`, then the slot of each text span (start, end, memory tokens) of the
        segment: (new state [1, L, 2, H, n_write, hd], one slot [L, 2, H, k, hd] per span)."""
        new, text, first = self.compress_keeping_text(embeds, state, n_write)
        return new, self.slots_from_text([(text[..., a:b, :], first + a, k) for a, b, k in spans])

    def compress_in_pass(self, embeds: torch.Tensor, mask: torch.Tensor, n_text: torch.Tensor,
                         state: torch.Tensor | None, n_write: int) -> torch.Tensor:
        """Slots written from a document pass (kv mode): [memory as cache] + <start> + embeds [B, T, d]
        (mask [B, T]) is run as `_compress_kv` runs a segment, then `n_write` write tokens read only the
        keys/values of each row's last n_text[i] tokens ([B]) and the slot pass's own <start> entry, at
        the positions a slot pass gives them. Returns the slots [B, L, 2, H, n_write, hd], canonical like
        `compress`'s. The text is read once for both levels: the one-pass hierarchy (LOG 2026-12-07)."""
        if not self.kv:
            raise ValueError("compress_in_pass: needs memory_mode 'kv'")
        B = embeds.shape[0]
        ones = mask.new_ones
        x = torch.cat([self.memory.marker(B, SEP).to(embeds.dtype), embeds], 1)
        o = self._continue_at(state)
        text = self._run(x, torch.cat([ones(B, 1), mask], 1), COMPRESS, None, 0, use_cache=True, past=state,
                         start=o).cache
        N = int(n_text.max())
        text = kv.from_cache(text, N)  # each row's text is its last n_text[i] entries: packing keeps them last
        first = o + 1 + mask.sum(1) - n_text  # [B]: position of each row's first slot token
        rows = zip(text, n_text.tolist(), first.tolist())
        return torch.stack(self.slots_from_text([(t[..., N - n:, :], f, n_write) for t, n, f in rows]))

    # ----- the slots-first document fold (LOG 2026-12-08) ------------------------------------
    def local_text(self, embeds: torch.Tensor, piece: torch.Tensor, first: int) -> torch.Tensor:
        """The keys/values slot passes give a text cut into pieces, in one pass: embeds [B, T, d], piece
        [B, T] (each token's piece, numbered from 0; -1: in none, e.g. a paragraph break or padding),
        token i at position `first` + i. A piece's tokens read only its earlier tokens and the slot pass's
        <start> entry moved just before it, as each piece's own slot pass reads it (`slots_from_text`);
        a token of no piece reads only itself. Returns [B, L, 2, H, T, hd]."""
        if not self.kv:
            raise ValueError("local_text: needs memory_mode 'kv'")
        B, T = piece.shape
        dev, idx = embeds.device, torch.arange(T, device=embeds.device)
        P = max(int(piece.max()) + 1, 1)
        # each piece's first token (T where a row has no such piece: its entry is read by nobody)
        begin = torch.full((B, P), T, dtype=torch.long, device=dev).scatter_reduce(
            1, piece.clamp(min=0), torch.where(piece >= 0, idx, T).expand(B, T), "amin")
        start = self._start_entry().float().expand(B, -1, -1, -1, P, -1)
        entries = kv.reposition(self._rot, start, first + begin - 1 - self._continue_at(None))
        same = (piece[:, :, None] == piece[:, None, :]) & (piece[:, :, None] >= 0)
        causal = idx[:, None] >= idx[None]
        allowed = torch.cat([piece[:, :, None] == torch.arange(P, device=dev)[None, None],
                             (same & causal) | torch.eye(T, dtype=torch.bool, device=dev)], 2)
        cache = self._run(embeds, torch.ones(B, T, dtype=torch.long, device=dev), COMPRESS, None, 0, use_cache=True,
                          past=entries.to(embeds.dtype), start=first, attn_mask=self._block_mask(allowed)).cache
        return kv.from_cache(cache, T)

    def fold_over_text(self, state: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                       read: torch.Tensor) -> torch.Tensor:
        """The document fold with the text's keys/values given: every segment's write tokens in one pass.

        state [B, L, 2, H, m, hd]: the memory before the first segment. text [B, L, 2, H, T, hd]: the keys/
        values of T tokens, token i at position o + 1 + i (o = `_continue_at(state)`: the first segment
        where `_kv_pass` puts it); mask [B, T] (1: real token); read [B, T] bool: the write tokens read
        the token's entry. Segment t's write tokens read its <start> (reading nothing), its read tokens
        and, as `_kv_pass` reads the memory, the write tokens of segment t - 1 (for t = 0, `state`), at
        the distances `_kv_pass` gives them (segment t placed t * (segment_len + 1) positions on).
        Returns M_1..M_N [B, N, L, 2, H, k, hd], canonical as `compress` returns them; a segment of no
        real token keeps the memory before it. Spread positions only.
        """
        if not (self.kv and self.spread):
            raise ValueError("fold_over_text: needs memory_mode 'kv' and memory_positions 'spread'")
        seg, k, dev = self.cfg.segment_len, self.cfg.num_mem_tokens, text.device
        B, T = mask.shape
        N, m, o = -(-T // seg), kv.mem_len(state), self._continue_at(state)
        n = F.pad(mask, (0, N * seg - T)).view(B, N, seg).sum(-1)  # [B, N] tokens per segment
        # Segment t's <start>: a memory is read as if its text ended just before the <start> at o, so
        # each segment sits segment_len + 1 positions after the one before; its text moves by t.
        at = o + (seg + 1) * torch.arange(N, device=dev)  # [N]
        seps = kv.reposition(self._rot, self._start_entry().float().expand(B, -1, -1, -1, N, -1),
                             (at - self._continue_at(None)).expand(B, N))
        t_seg = torch.arange(T, device=dev) // seg
        text = kv.reposition(self._rot, text.float(), t_seg.expand(B, T))
        past = torch.cat([state.float(), seps, text], -2)
        q_seg = torch.arange(N * k, device=dev) // k  # [Q] the segment of each write token
        Q = N * k
        causal = torch.arange(Q, device=dev)[:, None] >= torch.arange(Q, device=dev)[None]
        allowed = torch.cat([
            (q_seg == 0)[:, None].expand(Q, m),
            q_seg[:, None] == torch.arange(N, device=dev)[None],
            (q_seg[:, None] == t_seg[None]),
            ((q_seg[:, None] == q_seg[None]) & causal) | (q_seg[:, None] == q_seg[None] + 1),
        ], 1)[None].expand(B, -1, -1).clone()
        allowed[:, :, m + N:m + N + T] &= read.bool()[:, None, :]
        pos = (at[None, :, None] + 1 + self.spread_positions(n.view(-1), k).view(B, N, k)).view(B, Q)
        x = torch.cat([self.memory.write_tokens(B, k)] * N, 1).to(self.lm.get_input_embeddings().weight.dtype)
        cache = self._run(x, torch.ones(B, Q, dtype=torch.long, device=dev), COMPRESS, None, 0, use_cache=True,
                          past=past, start=0, tail_positions=pos, write_tail=Q,
                          attn_mask=self._block_mask(allowed)).cache
        w = kv.from_cache(cache, Q).unflatten(-2, (N, k)).movedim(-3, 1)  # [B, N, L, 2, H, k, hd]
        out = kv.reposition(self._rot, w.flatten(0, 1), -(at + 1).repeat(B)).view_as(w)
        prev, states = state.to(out.dtype), []
        for t in range(N):  # a segment of padding only keeps the memory (as `recurrence.fold`)
            prev = torch.where((n[:, t] > 0).view(B, 1, 1, 1, 1, 1), out[:, t], prev)
            states.append(prev)
        return torch.stack(states, 1)

    def slots_keeping_text(self, embeds: torch.Tensor, mask: torch.Tensor,
                           n_write: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Slots of B texts (embeds [B, T, d], mask [B, T], right-padded) as `compress` writes them with no
        memory, and each text's keys/values of that pass: (slots [B, L, 2, H, n_write, hd], one
        [L, 2, H, n_b, hd] per row, its first token at `_continue_at(None) + 1`), what the slots-first
        fold reads (`fold_over_pieces`)."""
        if not self.kv:
            raise ValueError("slots_keeping_text: needs memory_mode 'kv'")
        return self._kv_pass_keeping_text(embeds, mask, None, n_write)

    def fold_over_pieces(self, state: torch.Tensor, pieces: list[tuple[torch.Tensor, int]],
                         n_tokens: int) -> torch.Tensor:
        """The slots-first fold of one document of `n_tokens` tokens after `state` [1, L, 2, H, m, hd], from
        its pieces' slot-pass keys/values: (text [L, 2, H, n, hd] as `slots_keeping_text` gives it, the
        piece's first token in the document). Tokens of no piece (paragraph breaks) are not read.
        Returns M_1..M_N [N, L, 2, H, k, hd]."""
        L, _, H, _, hd = state.shape[1:]
        dev = state.device
        text = torch.zeros(1, L, 2, H, n_tokens, hd, device=dev)
        read = torch.zeros(1, n_tokens, dtype=torch.bool, device=dev)
        shift = self._continue_at(state) + 1 - (self._continue_at(None) + 1)
        for t, a in pieces:
            n = t.shape[-2]
            text[0, ..., a:a + n, :] = kv.reposition(self._rot, t[None].float(), torch.tensor([shift + a]))[0]
            read[0, a:a + n] = True
        return self.fold_over_text(state, text, torch.ones(1, n_tokens, dtype=torch.long, device=dev), read)[0]

    def fold_local(self, embeds: torch.Tensor, mask: torch.Tensor, piece: torch.Tensor,
                   state: torch.Tensor) -> torch.Tensor:
        """The slots-first document fold of embeds [B, T, d] (mask [B, T]) cut into slot pieces (piece
        [B, T], `local_text`) after `state`: each segment's memory written from the keys/values its
        pieces' slot passes give its tokens. Returns M_1..M_N [B, N, L, 2, H, k, hd]. The text is read in
        passes of about `LOCAL_TEXT_TOKENS` cut where every row's piece ends (pieces read only
        themselves: the same keys/values, without attention over the whole text)."""
        first, T = self._continue_at(state) + 1, piece.shape[1]
        ends = ((piece[:, 1:] != piece[:, :-1]).all(0).nonzero()[:, 0] + 1).tolist()  # every row's piece ends
        cuts = [0] + ends + [T]
        bounds, a = [], 0
        for i in cuts[1:]:
            if i == T or i - a >= LOCAL_TEXT_TOKENS:
                bounds.append((a, i))
                a = i
        parts = []
        for a, b in bounds:
            p = piece[:, a:b]
            low = torch.where(p >= 0, p, p.new_tensor(1 << 30)).amin(1, keepdim=True)
            parts.append(self.local_text(embeds[:, a:b], torch.where(p >= 0, p - low, p), first + a))
        return self.fold_over_text(state, torch.cat(parts, -2), mask, piece >= 0)

    def token_nll(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed negative log-likelihood of `labels` [B, T] under the hidden states [B, T, d], number of
        scored tokens); IGNORE_INDEX labels are not scored."""
        logits = self.logits(hidden).float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss, (labels != IGNORE_INDEX).sum()

    # ----- backward direction: expansion -------------------------------------------------------
    def _expand_prefix(self, state: torch.Tensor, query: tuple[torch.Tensor, torch.Tensor] | None, marker: int):
        """[memory] + <marker> + [query] + <sep>; in kv mode the memory is the cache, not a part here."""
        B, k = state.shape[0], 0 if self.kv else state.shape[2]
        dtype = self.lm.get_input_embeddings().weight.dtype
        parts = [state[:, 0].to(dtype)] if k else []
        parts.append(self.memory.marker(B, marker).to(dtype))
        masks = [torch.ones(B, k + 1, dtype=torch.long, device=state.device)]
        if query is not None:
            parts.append(self.embed(query[0]))
            masks.append(query[1])
        parts.append(self.memory.marker(B, SEP).to(dtype))
        masks.append(masks[0].new_ones(B, 1))
        return torch.cat(parts, 1), torch.cat(masks, 1), k

    def _teacher_forced(self, state: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                        query: tuple[torch.Tensor, torch.Tensor] | None, direction: str,
                        marker: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[memory] + <marker> + [query] + <sep> + ids [B, T] in one pass -> (hidden states predicting
        each token of `ids` [B, T, d], labels [B, T])."""
        x, m, k = self._expand_prefix(state, query, marker)
        P, T = x.shape[1], ids.shape[1]
        start = self._reader_start(state, m)
        x = torch.cat([x, self.embed(ids)], 1)
        m = torch.cat([m, mask], 1)
        hidden, _, _, _, _ = self._run(x, m, direction, state, k, past=state if self.kv else None, start=start)
        return hidden[:, P - 1:P - 1 + T], lm_labels(ids, mask)

    def teacher_force(self, state: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      query: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward, teacher-forced: the memory (and `query`) predicting each token of `target` [B, T]
        -> (hidden [B, T, d], labels [B, T]): the reconstruction loss, and the check of a draft."""
        return self._teacher_forced(state, target, mask, query, EXPAND, EXPAND_MARK)

    def score(self, state: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, the memory as a compressed context of a question: it predicting each token of `ids`
        [B, T] -> (hidden [B, T, d], labels [B, T]): p(query | slot) and its training term."""
        return self._teacher_forced(state, ids, mask, None, COMPRESS, QUERY)

    @torch.no_grad()
    @_exclusive
    def reconstruct(self, state: torch.Tensor, max_new_tokens: int, eos_id: int | None, *,
                    query: tuple[torch.Tensor, torch.Tensor] | None = None, sampling: Sampling = GREEDY,
                    probs: list[list[float]] | None = None, past_mask: torch.Tensor | None = None) -> list[list[int]]:
        """Backward: the text of each memory in `state` [B, ...] (conditioned on `query`), decoded with a
        key/value cache; one list of token ids per row, EOS not included.

        `probs`, if given a list, receives per row the probability the model gave each token it
        produced (softmax of the logits at temperature 1), from the same pass: no extra forward.
        `past_mask` [B, k] (kv memories): 0 on the padding memory tokens of shorter memories.
        """
        last, cache, mp, pos = self._expand_prefill(state, query, past_mask)
        return self._generate(EXPAND, last, cache, mp, pos, max_new_tokens, eos_id, sampling, probs)

    def _expand_prefill(self, state: torch.Tensor, query: tuple[torch.Tensor, torch.Tensor] | None,
                        past_mask: torch.Tensor | None = None):
        """The pass before a backward expansion's first token: (hidden state predicting it [B, d], cache,
        mask over cache + prefix, the prefix's last position [B, 1])."""
        x, m, k = self._expand_prefix(state, query, EXPAND_MARK)
        hidden, _, cache, mp, pos = self._run(x, m, EXPAND, state, k, use_cache=True,
                                              past=state if self.kv else None, start=self._reader_start(state, m),
                                              past_mask=past_mask)
        return hidden[:, -1], cache, mp, pos[:, -1:]

    @torch.no_grad()
    @_exclusive
    def continue_text(self, state: torch.Tensor, prompt: tuple[torch.Tensor, torch.Tensor], max_new_tokens: int,
                      eos_id: int | None, *, sampling: Sampling = GREEDY,
                      probs: list[list[float]] | None = None) -> list[list[int]]:
        """Forward: continue `prompt` (ids, mask [B, T]) after the memory, as a segment is read after one
        in training (kv: the memory as the cache, then <start>; else the memory as input tokens)."""
        e = self.embed(prompt[0])
        if self.kv:
            head, k, start = self.memory.marker(e.shape[0], SEP), 0, self._continue_at(state)
        else:
            head, k, start = state[:, 0], state.shape[2], None
        x = torch.cat([head.to(e.dtype), e], 1)
        m = torch.cat([prompt[1].new_ones(e.shape[0], head.shape[1]), prompt[1]], 1)
        hidden, _, cache, mp, pos = self._run(x, m, COMPRESS, state, k, use_cache=True,
                                              past=state if self.kv else None, start=start)
        # The last logical position is real for every row, so it predicts the first new token.
        return self._generate(COMPRESS, hidden[:, -1], cache, mp, pos[:, -1:], max_new_tokens, eos_id, sampling,
                              probs)

    def _feed(self, direction: str, ids: torch.Tensor, cache, mp: torch.Tensor, pos: torch.Tensor):
        """Run `ids` [B, n] after the cached ones: (hidden [B, n, d], cache, mask [B, cached + n], positions
        [B, n]). The memory is already in the cache: the layer hooks only matter for coupling adapters."""
        pos = pos[:, -1:] + torch.arange(1, ids.shape[1] + 1, device=pos.device)
        mp = torch.cat([mp, mp.new_ones(ids.shape)], 1)
        self._ctx = _CallContext(direction) if self.couplings is not None else None
        try:
            o = self.body(inputs_embeds=self.embed(ids), attention_mask=mp, position_ids=pos, past_key_values=cache,
                          use_cache=True)
        finally:
            self._ctx = None
        return o.last_hidden_state.float(), o.past_key_values, mp, pos

    def _generate(self, direction: str, last: torch.Tensor, cache, mp: torch.Tensor, pos: torch.Tensor,
                  max_new_tokens: int, eos_id: int | None, sampling: Sampling,
                  probs: list[list[float]] | None) -> list[list[int]]:
        """The key/value-cached decoding loop of `reconstruct` and `continue_text`: `last` [B, d] is the
        hidden state predicting each row's first new token, `cache` / `mp` / `pos` what was run so far."""
        B = last.shape[0]
        out: list[list[int]] = [[] for _ in range(B)]
        p_out: list[list[float]] = [[] for _ in range(B)]
        done = [False] * B
        for step in range(max_new_tokens):
            logits = self.logits(last).float()
            nxt = self._pick(logits, sampling)
            picked = nxt.tolist()
            p_nxt = torch.softmax(logits, -1).gather(-1, nxt[:, None])[:, 0].tolist() if probs is not None else None
            for b, t in enumerate(picked):
                if done[b]:
                    continue
                if t == eos_id:
                    done[b] = True
                else:
                    out[b].append(t)
                    if p_nxt is not None:
                        p_out[b].append(p_nxt[b])
            if all(done) or step + 1 == max_new_tokens:  # no pass for a token nobody reads
                break
            hidden, cache, mp, pos = self._feed(direction, nxt[:, None], cache, mp, pos)
            last = hidden[:, -1]
        if probs is not None:
            probs.extend(p_out)
        return out

    @torch.no_grad()
    @_exclusive
    def reconstruct_drafted(self, state: torch.Tensor, draft: list[int], max_new_tokens: int, eos_id: int | None,
                            probs: list[float] | None = None, lookahead: int = DRAFT_LOOKAHEAD) -> list[int]:
        """Greedy `reconstruct` of one memory (`state` [1, ...]) with a guess of it (`draft`, token ids, e.g.
        the text the slot was written from) fed ahead of the model: speculative decoding with the draft as
        the draft model. Each pass feeds the model's next token and up to `lookahead` draft tokens after it,
        keeps the draft tokens the model would have produced itself (its argmax after the tokens before
        equals them) and crops the rest from the cache; where the model says another token the draft is
        realigned (`_realign`); after a pass that kept nothing the next one feeds fewer draft tokens (a draft
        the model has left costs little more than plain decoding). The tokens are greedy decoding's (in
        float32; bfloat16 rounding can differ between one pass of many tokens and many passes of one, so
        near-ties may break the other way), one pass per run of right draft tokens instead of one per
        token. `probs`, if given a list, receives each token's probability."""
        last, cache, mp, pos = self._expand_prefill(state, None)
        logits = self.logits(last).float()  # [1, vocab]: predicts the first token
        guess = list(draft) + ([eos_id] if eos_id is not None else [])
        out, p_out, d, reach = [], [], 0, lookahead
        while len(out) < max_new_tokens:
            nxt = int(logits[0].argmax())
            if nxt == eos_id:
                break
            out.append(nxt)
            p_out.append(float(torch.softmax(logits[0], -1)[nxt]))
            if len(out) == max_new_tokens:
                break
            d = _realign(guess, d, nxt)
            ahead = guess[d:d + min(reach, max_new_tokens - len(out))]
            h, cache, fmp, fpos = self._feed(EXPAND, torch.tensor([[nxt, *ahead]], device=state.device), cache, mp,
                                             pos)
            lg = self.logits(h[0]).float()  # [1 + len(ahead), vocab]: row a predicts after feed[a]
            best = lg.argmax(-1).tolist()
            a = 0  # draft tokens kept
            while a < len(ahead) and best[a] == ahead[a] and ahead[a] != eos_id:
                a += 1
            if a:  # their probabilities, from this pass's logits in one softmax
                out.extend(ahead[:a])
                p_out.extend(torch.softmax(lg[:a], -1).gather(-1, torch.tensor(ahead[:a], device=lg.device)[:, None])
                             [:, 0].tolist())
            d += a
            # Where the model and the draft part ways, feeding it costs without paying: reach a quarter as
            # far after a pass that kept nothing, twice as far after one that kept it all (up to `lookahead`).
            reach = max(1, reach // 4) if a == 0 else min(lookahead, 2 * reach) if a == len(ahead) else reach
            if len(ahead) > a:  # the next token and the kept draft tokens stay in the cache
                cache.crop(a - len(ahead))  # transformers 5: a negative count of tokens to remove
            mp, pos, logits = fmp[:, :fmp.shape[1] - len(ahead) + a], fpos[:, a:a + 1], lg[a:a + 1]
        if probs is not None:
            probs.extend(p_out)
        return out

    @staticmethod
    def _pick(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        if sampling.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / sampling.temperature, -1)
        if sampling.top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            cut = sp.cumsum(-1) - sp > sampling.top_p
            sp = sp.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, si, sp)
        return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=sampling.generator).squeeze(-1)

    # ----- bookkeeping ------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
