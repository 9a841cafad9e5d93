"""Backbone wrapper, adapters, virtual memory tokens and segment recurrence on tiny models."""

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg, tiny_r3

from r3mem.coupling import Coupling
from r3mem.model import R3MemModel
from r3mem.recurrence import fold
from r3mem.tiny import FAMILIES, tiny_model, tiny_tokenizer
from r3mem.tokens import pad_batch


def _encode(model, ids, mask, *, bptt_depth=None, with_loss=False):
    """The document recurrence over [B, T] tokens from M_0 (`recurrence.fold`): (state, loss sum, n)."""
    out = fold(model, model.initial_state(ids.shape[0]), ids, mask, bptt_depth=bptt_depth or model.cfg.bptt_depth,
               with_loss=with_loss)
    return out.state, out.loss, out.n


def _ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, len(tiny_tokenizer()), (batch, n), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["adapters", "coupling"])
def test_parity_with_adapters_disabled(family, mode):
    bare = tiny_model(family)
    ids = _ids(12, 2)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = bare(input_ids=ids, attention_mask=mask).logits
    model = R3MemModel(tiny_model(family), tiny_cfg(reversible_mode=mode))
    perturb_trainables(model)
    with torch.no_grad(), model.adapters_disabled():
        got = model.lm(input_ids=ids, attention_mask=mask).logits
        on = None
    with torch.no_grad():
        on = model.lm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(on, ref, atol=1e-4), "perturbed adapters must change the output"


def _expected_trainable(model: R3MemModel, family: str) -> int:
    cfg, base = model.cfg, model.lm.config
    d, L = base.hidden_size, base.num_hidden_layers
    kv = (
        d // base.num_attention_heads * getattr(base, "num_key_value_heads", base.num_attention_heads)
        if family != "gpt2"
        else d
    )
    r = cfg.lora_rank
    if family == "gpt2":  # peft default for GPT-2: c_attn (d -> 3d)
        per_layer = r * (d + 3 * d)
    else:  # peft default for Llama/Qwen2: q_proj (d -> d) and v_proj (d -> kv)
        per_layer = r * (d + d) + r * (d + kv)
    n_adapters = 2 if cfg.reversible_mode == "adapters" else 1
    lora = per_layer * L * n_adapters
    memory = (cfg.num_mem_tokens + cfg.max_slot_tokens + 3) * d
    memory += d * d + d if cfg.memory_mode != "kv" else 0  # the read map; a kv memory is read as keys/values
    memory += L if cfg.memory_mode == "layerwise" else 0
    h, c = d // 2, cfg.coupling_hidden
    coupling = 2 * (h * c + c + c * h + h) * L if cfg.reversible_mode == "coupling" else 0
    return lora + memory + coupling


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "mode,memory_mode", [("adapters", "input"), ("coupling", "layerwise"), ("adapters", "kv"), ("coupling", "kv")]
)
def test_only_adapters_and_memory_train(family, mode, memory_mode):
    model = tiny_r3(family, reversible_mode=mode, memory_mode=memory_mode)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == _expected_trainable(model, family)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert ".lora_" in n or n.startswith(("memory.", "couplings.")), n
    base_params = sum(p.numel() for n, p in model.lm.named_parameters() if ".lora_" not in n)
    assert all(not p.requires_grad for n, p in model.lm.named_parameters() if ".lora_" not in n)
    assert base_params > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_manual_segment_loop_equals_the_fold(family):
    model = tiny_r3(family, segment_len=8)
    perturb_trainables(model)
    ids = _ids(30)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        state, _, _ = _encode(model, ids, mask)
        manual = model.initial_state(1)
        for s in range(0, 30, 8):
            seg = ids[:, s:s + 8]
            manual, _, _ = model.compress(model.embed(seg), torch.ones_like(seg), manual, model.cfg.num_mem_tokens)
    torch.testing.assert_close(state, manual)


@pytest.mark.parametrize("memory_mode", ["kv", "input", "layerwise"])
def test_memory_size_constant_in_history_length(memory_mode):
    model = tiny_r3("llama", segment_len=4, memory_mode=memory_mode)
    shapes = set()
    with torch.no_grad():
        for n_seg in (1, 10, 100):
            ids = _ids(4 * n_seg)
            state, _, _ = _encode(model, ids, torch.ones_like(ids))
            assert torch.isfinite(state).all()
            shapes.add(tuple(state.shape))
    assert len(shapes) == 1


@pytest.mark.parametrize("memory_mode", ["kv", "input", "layerwise"])
def test_information_flows_from_earlier_segment(memory_mode):
    model = tiny_r3("llama", segment_len=8, memory_mode=memory_mode)
    perturb_trainables(model)
    a, b, last = _ids(8, seed=1), _ids(8, seed=2), _ids(8, seed=3)
    losses = []
    with torch.no_grad():
        for first in (a, b):
            ids = torch.cat([first, last], 1)
            state, _, _ = _encode(model, ids[:, :8], torch.ones_like(ids[:, :8]))
            _, loss, _ = model.compress(model.embed(last), torch.ones_like(last), state, 4, labels=last)
            losses.append(loss)
    assert not torch.isclose(losses[0], losses[1]), "segment 2's loss must depend on segment 1"


@pytest.mark.parametrize("memory_mode", ["kv", "input", "layerwise"])
def test_gradients_reach_memory_parameters(memory_mode):
    model = tiny_r3("llama", segment_len=8, memory_mode=memory_mode)
    perturb_trainables(model)
    ids = _ids(24)
    _, loss, n = _encode(model, ids, torch.ones_like(ids), with_loss=True)
    (loss / n).backward()
    for name in ("init_mem", "write_emb", "markers"):
        p = getattr(model.memory, name)
        if name != "markers":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    if memory_mode == "layerwise":
        assert model.memory.layer_gate.grad.abs().sum() > 0


def _grad_of_last_segment_on_init(model, ids, depth):
    model.zero_grad()
    state = model.initial_state(1)
    seg = model.cfg.segment_len
    for t, s in enumerate(range(0, ids.shape[1] - seg, seg)):
        if t and t % depth == 0:
            state = state.detach()
        chunk = ids[:, s:s + seg]
        state, _, _ = model.compress(model.embed(chunk), torch.ones_like(chunk), state, 4)
    last = ids[:, -seg:]
    _, loss, _ = model.compress(model.embed(last), torch.ones_like(last), state, 4, labels=last)
    loss.backward()
    g = model.memory.init_mem.grad
    return 0.0 if g is None else float(g.abs().sum())


def _bptt_model(memory_mode):
    # A kv memory passes what it holds up at least one layer per segment (a write token's layer-l keys
    # see the memory's layers < l only), so reaching 3 segments back needs more than 3 layers.
    return R3MemModel(tiny_model("llama", layers=4), tiny_cfg(segment_len=8, memory_mode=memory_mode))


@pytest.mark.parametrize("memory_mode", ["kv", "input"])
def test_bptt_depth_cuts_gradients(memory_mode):
    model = _bptt_model(memory_mode)
    perturb_trainables(model)
    ids = _ids(32)  # 3 segments then the scored one
    assert _grad_of_last_segment_on_init(model, ids, depth=4) > 0
    assert _grad_of_last_segment_on_init(model, ids, depth=2) == 0.0
    # the fold applies the same rule: over two segments, depth 2 keeps the path to M_0, depth 1 cuts it
    two = ids[:, :16]
    for depth, reaches in ((2, True), (1, False)):
        model.zero_grad()
        state, _, _ = _encode(model, two, torch.ones_like(two), bptt_depth=depth)
        state.sum().backward()
        g = model.memory.init_mem.grad
        assert (g is not None and g.abs().sum() > 0) == reaches, depth


@pytest.mark.parametrize("memory_mode", ["kv", "input"])
def test_bptt_depth_cuts_gradients_on_the_training_path(memory_mode):
    """`lm_losses` (what `r3mem train` runs on document windows) cuts gradients every `bptt_depth`
    segments: its gradient equals a hand-written loop that detaches there, and differs from no cut."""
    from r3mem.losses import lm_losses

    ids = _ids(32)
    mask = torch.ones_like(ids)

    def grads(depth, manual):
        model = R3MemModel(
            tiny_model("llama", layers=4), tiny_cfg(segment_len=8, memory_mode=memory_mode, bptt_depth=depth)
        )
        perturb_trainables(model)
        if manual:
            state, total, n = model.initial_state(1), 0.0, 0
            for t in range(4):
                if t and t % depth == 0:
                    state = state.detach()
                seg = ids[:, 8 * t:8 * t + 8]
                state, loss, k = model.compress(model.embed(seg), torch.ones_like(seg), state, 4, labels=seg)
                total, n = total + loss, n + k
            (total / n).backward()
        else:
            lm_losses(model, ids, mask, w_fwd=1.0, w_bwd=0.0, w_cyc=0.0).forward.backward()
        return model.memory.init_mem.grad.clone()

    cut = grads(2, manual=False)
    torch.testing.assert_close(cut, grads(2, manual=True))
    assert not torch.allclose(cut, grads(4, manual=False)), "depth 2 must cut paths that depth 4 keeps"


def test_coupling_inverse_recovers_input():
    g = torch.Generator().manual_seed(0)
    c = Coupling(64, 32, g)
    with torch.no_grad():
        for p in c.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)  # far from identity
        for _ in range(5):
            h = torch.randn(3, 7, 64, generator=g)
            y = c(h)
            assert not torch.allclose(y, h, atol=1e-3)
            torch.testing.assert_close(c.inverse(y), h, rtol=0, atol=1e-5)
            torch.testing.assert_close(c(c.inverse(h)), h, rtol=0, atol=1e-5)


def _encode_batch_and_rows(model, a: torch.Tensor, b: torch.Tensor):
    """Encode [a, b] as one padded batch and each alone; assert the memories match row by row."""
    ids, mask = pad_batch([a.tolist(), b.tolist()], 0, torch.device("cpu"))
    both, _, _ = _encode(model, ids, mask)
    one, _, _ = _encode(model, a[None], torch.ones(1, len(a), dtype=torch.long))
    two, _, _ = _encode(model, b[None], torch.ones(1, len(b), dtype=torch.long))
    torch.testing.assert_close(both[0], one[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[1], two[0], atol=1e-5, rtol=1e-4)
    return both, one, two


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("memory_mode", ["kv", "input", "layerwise"])
def test_batch_of_two_equals_two_batches_of_one(family, memory_mode):
    model = tiny_r3(
        family, segment_len=8, memory_mode=memory_mode, reversible_mode="coupling" if family == "qwen2" else "adapters"
    )
    perturb_trainables(model)
    a, b = _ids(20, seed=4)[0], _ids(13, seed=5)[0]
    ids, mask = pad_batch([a.tolist(), b.tolist()], 0, torch.device("cpu"))
    with torch.no_grad():
        both, one, two = _encode_batch_and_rows(model, a, b)
        # expansion (teacher forced) and greedy decoding are padding-correct too
        hb, _ = model.teacher_force(both, ids, mask)
        h1, _ = model.teacher_force(one, a[None], torch.ones(1, 20, dtype=torch.long))
        h2, _ = model.teacher_force(two, b[None], torch.ones(1, 13, dtype=torch.long))
        torch.testing.assert_close(hb[0], h1[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(hb[1, :13], h2[0], atol=1e-5, rtol=1e-4)
        db = model.reconstruct(both, 6, None)
        assert db == [model.reconstruct(one, 6, None)[0], model.reconstruct(two, 6, None)[0]]


def test_directions_use_different_adapters_and_both_get_gradients():
    model = tiny_r3("llama")
    perturb_trainables(model)
    ids = _ids(10)
    mask = torch.ones_like(ids)
    state, loss, n = _encode(model, ids, mask, with_loss=True)
    hidden, labels = model.teacher_force(state, ids, mask)
    rec, m = model.token_nll(hidden, labels)
    (loss / n + rec / m).backward()
    comp = [p for name, p in model.named_parameters() if ".compress." in name]
    exp = [p for name, p in model.named_parameters() if ".expand." in name]
    assert comp and exp
    assert all(p.grad is not None for p in comp + exp)
    assert sum(float(p.grad.abs().sum()) for p in exp) > 0


def _perturb_adapter(model, name: str, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f".{name}." in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("memory_mode", ["kv", "input"])
def test_write_adapter_serves_only_the_write_tokens(memory_mode):
    model = tiny_r3("llama", segment_len=8, memory_mode=memory_mode, write_adapter=True)
    assert model.adapter_names == ("compress", "expand", "write")
    perturb_trainables(model)
    ids = _ids(8)
    mask = torch.ones_like(ids)
    labels = ids.clone()

    def run(prior=None):
        with torch.no_grad():
            m0 = model.initial_state(1)
            state, loss, _ = model.compress(model.embed(ids), mask, m0 if prior is None else prior, 4, labels)
        return m0, state, loss

    m0, state, loss = run()
    _perturb_adapter(model, "write")  # the memory it writes changes, the text's LM loss does not
    m0_w, state_w, loss_w = run(prior=m0)
    torch.testing.assert_close(loss_w, loss)
    assert not torch.allclose(state_w, state)
    if memory_mode == "kv":  # M_0 is write tokens only: it takes the write adapter, not compress
        assert not torch.allclose(run()[0], m0)
        _perturb_adapter(model, "compress")
        m0_c, _, loss_c = run(prior=m0)
        torch.testing.assert_close(m0_c, run()[0])
        torch.testing.assert_close(m0_c, m0_w)
        assert not torch.allclose(loss_c, loss_w)


def test_write_adapter_gets_gradients_and_keeps_batches_padding_correct():
    model = tiny_r3("llama", segment_len=8, write_adapter=True)
    perturb_trainables(model)
    a, b = _ids(20, seed=4)[0], _ids(13, seed=5)[0]
    ids, mask = pad_batch([a.tolist(), b.tolist()], 0, torch.device("cpu"))
    state, loss, n = _encode(model, ids, mask, with_loss=True)
    hidden, labels = model.teacher_force(state, ids, mask)
    rec, m = model.token_nll(hidden, labels)
    (loss / n + rec / m).backward()
    for name in ("compress", "expand", "write"):
        grads = [p.grad for n_, p in model.named_parameters() if f".{name}." in n_]
        assert grads and sum(float(g.abs().sum()) for g in grads if g is not None) > 0, name
    with torch.no_grad():
        _encode_batch_and_rows(model, a, b)


@pytest.mark.parametrize("mode", ["input", "layerwise"])
def test_generation_after_an_input_memory_predicts_as_the_segment_scoring_does(mode):
    """The non-kv twin of test_kv's check: `decode` with a prompt reads [memory] + prompt as `compress`
    reads a segment after that memory, so the generated token's probability is its LM-loss probability."""
    import math

    from r3mem.tokens import IGNORE_INDEX

    model = tiny_r3(memory_mode=mode)
    perturb_trainables(model)
    g_ = torch.Generator().manual_seed(4)
    text = torch.randint(1, len(tiny_tokenizer()), (1, 16), generator=g_)
    prompt = torch.randint(1, len(tiny_tokenizer()), (1, 5), generator=g_)
    with torch.no_grad():
        mem, _, _ = model.compress(model.embed(text), torch.ones_like(text), model.initial_state(1), 4)
        probs: list[list[float]] = []
        (g,) = model.continue_text(mem, (prompt, torch.ones_like(prompt)), 1, None, probs=probs)
        seq = torch.cat([prompt, torch.tensor([g])], 1)
        labels = torch.full_like(seq, IGNORE_INDEX)
        labels[0, -1] = g[0]
        _, nll, n = model.compress(model.embed(seq), torch.ones_like(seq), mem, 4, labels)
    assert int(n) == 1
    assert probs[0][0] == pytest.approx(math.exp(-float(nll)), rel=1e-4)
