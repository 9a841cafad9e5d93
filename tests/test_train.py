"""Training pipeline on the tiny config: checkpoints, metrics, exact resume, loss-weight ablation."""

import dataclasses
import json

import pytest
import torch
from conftest import perturb_trainables, tiny_r3
from typer.testing import CliRunner

from r3mem.adapter import read_adapter
from r3mem.cli.main import app
from r3mem.cli.train import resolve_config_path
from r3mem.config import ConfigError, load_config
from r3mem.engine import R3Mem
from r3mem.losses import lm_losses, pair_losses, recon_losses
from r3mem.model import R3MemModel
from r3mem.tiny import tiny_model
from r3mem.tokens import pad_batch
from r3mem.train.config import TrainConfig, apply_overrides
from r3mem.train.loop import lr_factor, step_losses, train


@pytest.fixture(scope="module")
def tiny_cfg_train():
    return load_config(resolve_config_path("tiny"), TrainConfig)


def _weights(run_dir):
    _, state, _ = read_adapter(run_dir / "adapter")
    return state


def test_train_writes_checkpoints_metrics_and_adapter(tiny_cfg_train, tmp_path):
    res = train(tiny_cfg_train, tmp_path, progress=False)
    assert res.steps_done == tiny_cfg_train.steps
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert {"forward", "backward", "cycle", "total", "lr", "tokens_per_s", "level"} <= set(r)
        assert all(map(lambda k: r[k] == r[k], ("forward", "backward", "cycle")))  # no NaN
    assert rows[0]["level"] == "recon"  # curriculum starts with reconstruction
    assert (tmp_path / "losses.png").stat().st_size > 1000
    assert (tmp_path / "train_config.yaml").exists()


def test_resume_equals_uninterrupted(tiny_cfg_train, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_cfg_train, full, progress=False)
    stopped = train(tiny_cfg_train, part, progress=False, stop_after=4)  # "interrupted" after step 4
    assert stopped.steps_done == 4 and stopped.adapter_dir is None
    train(tiny_cfg_train, part, progress=False)  # resumes from checkpoint step 4
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    log_a = (full / "metrics.jsonl").read_text().splitlines()
    log_b = (part / "metrics.jsonl").read_text().splitlines()
    def strip(rows):
        return [{k: v for k, v in json.loads(r).items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]
    assert strip(log_a) == strip(log_b)


def test_curriculum_starts_with_reconstruction_at_its_phase_ratios(tiny_cfg_train, tmp_path):
    from r3mem.backbone import load_base
    from r3mem.train.mixture import TrainingMixture

    _, tok = load_base(tiny_cfg_train.model.base_model)
    data = TrainingMixture(tiny_cfg_train, tok)
    first = [data.batch(s, m) for s in range(2) for m in range(2)]
    assert all(b["level"] == "recon" and b["ratio"] == 2.0 for b in first)
    for b in first:  # rows of a batch are length neighbours, each target its context + <eos>
        lens = b["ctx"][1].sum(1)
        assert torch.equal(b["target"][1].sum(1), lens + 1)
    later = {
        (b["level"], b["ratio"])
        for b in (data.batch(s, m) for s in range(3, 5) for m in range(2))
        if b["level"] == "recon"
    }
    assert later <= {("recon", 4.0)}
    train(tiny_cfg_train, tmp_path, progress=False, stop_after=2)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["level"] for r in rows} == {"recon"} and all(r["backward"] > 0 and r["forward"] == 0 for r in rows)


def test_recon_lm_adds_the_text_lm_term_to_reconstruction_batches(tiny_cfg_train, tmp_path):
    cfg = dataclasses.replace(tiny_cfg_train, model=dataclasses.replace(tiny_cfg_train.model, recon_lm=True))
    train(cfg, tmp_path, progress=False, stop_after=2)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["level"] for r in rows} == {"recon"} and all(r["forward"] > 0 and r["backward"] > 0 for r in rows)
    m = cfg.model
    assert all(abs(r["total"] - m.w_fwd * r["forward"] - m.w_bwd * r["backward"] - m.w_cyc * r["cycle"]) < 1e-4
               for r in rows)


def test_init_adapter_continues_an_earlier_run(tiny_cfg_train, tmp_path):
    import dataclasses

    train(tiny_cfg_train, tmp_path / "a", progress=False, stop_after=4)
    ckpt = tmp_path / "a" / "checkpoints" / "step_0000004"
    cfg = dataclasses.replace(tiny_cfg_train, init_adapter=str(ckpt))
    seen = []
    res = train(cfg, tmp_path / "b", progress=False, on_step=seen.append)
    assert [m["step"] for m in seen] == [5, 6] and res.steps_done == 6
    assert seen[0]["lr"] == pytest.approx(tiny_cfg_train.lr * lr_factor(5, tiny_cfg_train))  # logged after the step
    with pytest.raises(Exception, match="does not fit"):
        train(dataclasses.replace(cfg, model=cfg.model.replace(memory_mode="input")), tmp_path / "c", progress=False)


def test_cli_train_with_overrides(tmp_path):
    r = CliRunner().invoke(app, ["train", "--config", "tiny", "--out", str(tmp_path), "--set", "steps=2",
                                 "--set", "checkpoint_every=1", "--set", "model.w_cyc=0"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "adapter" / "r3mem_adapter.json").read_text())["config"]["w_cyc"] == 0
    bad = CliRunner().invoke(app, ["train", "--config", "tiny", "--out", str(tmp_path / "x"), "--set", "steps=0"])
    assert bad.exit_code == 1 and "steps: must be an integer >= 1" in bad.output


def test_a_run_with_a_write_adapter_saves_it_and_loads_back(tmp_path):
    r = CliRunner().invoke(app, ["train", "--config", "tiny", "--out", str(tmp_path), "--set", "steps=2",
                                 "--set", "checkpoint_every=1", "--set", "model.write_adapter=true"])
    assert r.exit_code == 0, r.output
    engine = R3Mem.from_pretrained(tmp_path / "adapter")
    assert engine.model.cfg.write_adapter
    assert any(".write." in n for n in engine.model.trainable_state_dict())
    assert engine.adapter_hash == json.loads((tmp_path / "adapter" / "r3mem_adapter.json").read_text())["adapter_hash"]


def test_train_config_validation():
    with pytest.raises(ConfigError, match="^curriculum:"):
        TrainConfig(curriculum=[{"until": 0.5, "levels": ["document"]}])
    with pytest.raises(ConfigError, match="^precision:"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="^device:"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match="^model: unknown|^colour: unknown"):
        TrainConfig.from_dict({"colour": 1})
    assert apply_overrides({"model": {}}, ["model.lora_rank=4", "lr=1e-3"]) == {"model": {"lora_rank": 4}, "lr": 1e-3}
    cfg = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) == pytest.approx(cfg.min_lr_ratio, abs=1e-3)


def test_cooldown_lr_falls_linearly_from_the_cosine_to_the_floor():
    main = TrainConfig(steps=100, warmup_steps=10)
    cool = TrainConfig(steps=100, warmup_steps=10, cooldown_from=40, cooldown_steps=20)
    assert cool.last_step == 60 and main.last_step == 100
    assert [lr_factor(s, cool) for s in range(40)] == [lr_factor(s, main) for s in range(40)]
    tail = [lr_factor(s, cool) for s in range(40, 60)]
    assert tail[-1] == pytest.approx(cool.min_lr_ratio)  # the last update is at the floor
    assert all(a > b for a, b in zip([lr_factor(39, main)] + tail, tail))  # strictly falling
    steps = [b - a for a, b in zip(tail, tail[1:])]
    assert max(steps) == pytest.approx(min(steps))  # linear
    assert TrainConfig(steps=100, cooldown_from=95, cooldown_steps=20).last_step == 100  # never past `steps`
    with pytest.raises(ConfigError, match="^cooldown_from:"):
        TrainConfig(steps=100, cooldown_from=100)
    with pytest.raises(ConfigError, match="^cooldown_steps:"):
        TrainConfig(cooldown_steps=0)


def test_cooldown_branch_resumes_a_checkpoint_and_ends_with_an_adapter(tiny_cfg_train, tmp_path):
    import shutil

    cfg = dataclasses.replace(tiny_cfg_train, steps=12, checkpoint_every=4)
    train(cfg, tmp_path / "main", progress=False, stop_after=4)
    ckpt = "checkpoints/step_0000004"
    shutil.copytree(tmp_path / "main" / ckpt, tmp_path / "cool" / ckpt)
    branch = dataclasses.replace(cfg, cooldown_from=4, cooldown_steps=3)
    seen = []
    res = train(branch, tmp_path / "cool", progress=False, on_step=seen.append)
    assert [m["step"] for m in seen] == [5, 6, 7] and res.steps_done == 7 and res.adapter_dir is not None
    assert seen[-1]["lr"] == pytest.approx(cfg.lr * lr_factor(7, branch))
    assert [m["lr"] for m in seen] == sorted((m["lr"] for m in seen), reverse=True)
    final = json.loads((res.adapter_dir / "r3mem_adapter.json").read_text())
    assert final["steps"] == 7 and final["examples_seen"] == 7 * cfg.batch_size * cfg.grad_accum
    meta = json.loads((tmp_path / "cool" / "checkpoints" / "step_0000007" / "r3mem_adapter.json").read_text())
    assert meta["step"] == 7 and meta["examples_seen"] == 7 * cfg.batch_size * cfg.grad_accum


def _grads(model, fn):
    model.zero_grad()
    fn().backward()
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
        if p.requires_grad
    }


@pytest.mark.parametrize("term", ["forward", "backward", "cycle"])
def test_zero_weight_removes_that_terms_gradient(tok, term):
    model = tiny_r3("llama", segment_len=8)
    perturb_trainables(model)
    ids = tok("Henry Sibley built a stone house near the ferry.", add_special_tokens=False)["input_ids"]
    q = tok("Who built a house?", add_special_tokens=False)["input_ids"]
    dev = torch.device("cpu")
    ctx, query, tgt = pad_batch([ids], 0, dev), pad_batch([q + [0]], 0, dev), pad_batch([ids + [0]], 0, dev)
    w = {"forward": 1.0, "backward": 1.0, "cycle": 1.0}
    w_off = {**w, term: 0.0}
    for losses in ("pair", "lm"):
        def run(weights):
            if losses == "pair":  # noqa: B023 - run() is called within this iteration
                t = pair_losses(model, ctx, query, tgt, 4.0, weights["forward"], weights["backward"], weights["cycle"])
            else:
                t = lm_losses(model, ctx[0], ctx[1], weights["forward"], weights["backward"], weights["cycle"])
            return t.total(weights["forward"], weights["backward"], weights["cycle"]), t

        g_all = _grads(model, lambda: run(w)[0])
        g_off = _grads(model, lambda: run(w_off)[0])
        t_off = run(w_off)[1]
        assert float(getattr(t_off, term)) == 0.0
        # the term's own gradient = g_all - g_off is non-zero, and with weight 0 it is gone
        diff = sum(float((g_all[n] - g_off[n]).abs().sum()) for n in g_all)
        assert diff > 0, f"{term} term had no gradient to remove ({losses})"
        only_others = {k: v for k, v in w_off.items()}
        g_again = _grads(model, lambda: run(only_others)[0])  # noqa: B023 - called at once
        for n in g_off:
            torch.testing.assert_close(g_again[n], g_off[n])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_one_fails_before_the_model_loads(tiny_cfg_train, tmp_path, monkeypatch):
    import r3mem.train.loop as loop

    monkeypatch.setattr(loop, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="device: 'cuda' was asked for"):
        loop.train(dataclasses.replace(tiny_cfg_train, device="cuda"), tmp_path, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_runs_on_cuda(tiny_cfg_train, tmp_path):
    res = train(dataclasses.replace(tiny_cfg_train, device="cuda", precision="bf16", steps=3), tmp_path,
                progress=False)
    assert res.steps_done == 3 and res.adapter_dir is not None


def test_a_time_limit_stops_at_a_checkpoint_and_resumes(tiny_cfg_train, tmp_path):
    cfg = dataclasses.replace(tiny_cfg_train, steps=6, checkpoint_every=100)
    first = train(cfg, tmp_path, progress=False, time_limit_s=0.0)
    assert first.steps_done == 1 and first.adapter_dir is None
    assert (tmp_path / "checkpoints" / "step_0000001").is_dir()
    rest = train(cfg, tmp_path, progress=False)
    assert rest.steps_done == 6 and rest.adapter_dir is not None


def test_memory_lr_scale_gives_the_memory_its_own_learning_rate(tiny_cfg_train, tmp_path):
    cfg = dataclasses.replace(tiny_cfg_train, memory_lr_scale=10.0)
    train(cfg, tmp_path, progress=False, stop_after=2)
    ts = torch.load(tmp_path / "checkpoints" / "step_0000002" / "trainer_state.pt", weights_only=False)
    lora, mem = ts["optimizer"]["param_groups"]
    assert mem["lr"] == pytest.approx(10 * lora["lr"]) and lora["lr"] == pytest.approx(cfg.lr * lr_factor(2, cfg))
    model = tiny_r3()
    assert len(mem["params"]) == sum(n.startswith("memory.") for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="saved with 2 parameter group"):  # changed mid-run: refused, not misread
        train(tiny_cfg_train, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="^memory_lr_scale: must be > 0"):
        dataclasses.replace(tiny_cfg_train, memory_lr_scale=0.0)


def test_read_previous_scores_each_segment_after_the_true_text_before_it(tok):
    from r3mem.recurrence import fold

    model = tiny_r3("llama", segment_len=8)
    perturb_trainables(model)
    rows = [tok("Henry Sibley built a stone house near the ferry in the spring of that year.",
                add_special_tokens=False)["input_ids"][:22],
            tok("The ferry ran twice a day.", add_special_tokens=False)["input_ids"][:12]]
    ids, mask = pad_batch(rows, 0, torch.device("cpu"))
    with torch.no_grad():
        plain = lm_losses(model, ids, mask, 1.0, 1.0, 0.0)
        read = lm_losses(model, ids, mask, 1.0, 1.0, 0.0, read_previous=True)
        asked: list[list[list[int]]] = []

        def previous_segment(_state):  # what read_previous must read: the real tokens of the segment before
            s = 8 * (len(asked) + 1)
            asked.append([r[s - 8:s] for r in rows])
            return asked[-1]

        ref = fold(model, model.initial_state(2), ids, mask, with_loss=True, read_prefix=previous_segment)
    torch.testing.assert_close(read.forward, ref.loss / ref.n)
    assert not torch.isclose(read.forward, plain.forward), "the previous text must change the LM loss"
    torch.testing.assert_close(read.backward, plain.backward)  # the memory is written from the segments alone
    c = model.cfg  # and the training step passes a document batch's draw on
    with torch.no_grad():
        stepped = step_losses(model, {"level": "document", "ids": ids, "mask": mask, "read_previous": True})
        direct = lm_losses(model, ids, mask, c.w_fwd, c.w_bwd, c.w_cyc, read_previous=True)
    torch.testing.assert_close(stepped.forward, direct.forward)


def test_read_previous_is_drawn_per_document_batch_without_changing_the_batches(tiny_cfg_train):
    from r3mem.backbone import load_base
    from r3mem.train.mixture import TrainingMixture

    _, tok = load_base(tiny_cfg_train.model.base_model)
    cfg = dataclasses.replace(tiny_cfg_train, curriculum=({"until": 1.0, "levels": ["document"]},))
    batches = {rate: [TrainingMixture(dataclasses.replace(cfg, lm_read_previous=rate), tok).batch(s) for s in range(12)]
               for rate in (0.0, 0.5, 1.0)}
    for b0, b5, b1 in zip(*batches.values()):
        assert torch.equal(b0["ids"], b5["ids"]) and torch.equal(b0["ids"], b1["ids"])
    assert {b["read_previous"] for b in batches[0.0]} == {False}
    assert {b["read_previous"] for b in batches[1.0]} == {True}
    assert {b["read_previous"] for b in batches[0.5]} == {False, True}
    with pytest.raises(ConfigError, match="^lm_read_previous: must be in"):
        TrainConfig(lm_read_previous=1.5)


def test_quant_bits_reads_a_share_of_slot_batches_quantized_and_trains_the_writer_through_it(tiny_cfg_train, tok):
    from r3mem.backbone import load_base
    from r3mem.train.mixture import TrainingMixture

    _, btok = load_base(tiny_cfg_train.model.base_model)
    cfg = dataclasses.replace(tiny_cfg_train, curriculum=({"until": 1.0, "levels": ["recon", "paragraph"]},))
    batches = {(b, p): [TrainingMixture(dataclasses.replace(cfg, quant_bits=b, quant_p=p), btok).batch(s)
                        for s in range(16)] for b, p in ((16, 0.5), (4, 0.5), (4, 1.0))}
    for b16, b4, b4all in zip(*batches.values()):
        assert torch.equal(b16["ctx"][0], b4["ctx"][0]) and torch.equal(b16["ctx"][0], b4all["ctx"][0])
    assert {b["bits"] for b in batches[16, 0.5]} == {16}
    assert {b["bits"] for b in batches[4, 0.5]} == {4, 16}
    assert {b["bits"] for b in batches[4, 1.0]} == {4}
    with pytest.raises(ConfigError, match="^quant_bits: must be one of"):
        TrainConfig(quant_bits=3)

    model = tiny_r3("llama", segment_len=8)
    perturb_trainables(model)
    ids = tok("Henry Sibley built a stone house near the ferry in the spring.", add_special_tokens=False)["input_ids"]
    dev = torch.device("cpu")
    ctx, tgt = pad_batch([ids], 0, dev), pad_batch([ids + [0]], 0, dev)
    with torch.no_grad():
        full = recon_losses(model, ctx, tgt, 4.0).backward
        two = recon_losses(model, ctx, tgt, 4.0, bits=2).backward
        stepped = step_losses(model, {"level": "recon", "ctx": ctx, "target": tgt, "ratio": 4.0, "bits": 2}).backward
    assert not torch.isclose(full, two), "the reader must see the rounded memory"
    torch.testing.assert_close(stepped, two)  # the training step passes the batch's bits on
    g = _grads(model, lambda: recon_losses(model, ctx, tgt, 4.0, bits=2).backward)
    writer = [n for n in g if "lora" in n and "compress" in n and float(g[n].abs().sum()) > 0]
    assert writer, "the writer's adapter must get a gradient through the quantizer"


def test_micro_batches_add_up_to_the_gradient_of_the_whole_batch(tiny_cfg_train, tmp_path):
    from r3mem.backbone import load_base
    from r3mem.train.mixture import TrainingMixture, split_rows

    cfg = dataclasses.replace(tiny_cfg_train, curriculum=({"until": 1.0, "levels": ["document"]},), batch_size=4,
                              lm_read_previous=1.0)
    _, tok = load_base(cfg.model.base_model)
    batch = TrainingMixture(cfg, tok).batch(0)
    assert batch["mask"].all(), "rows of equal length: the row-weighted chunks are then exact"
    model = tiny_r3("llama", segment_len=cfg.model.segment_len)
    perturb_trainables(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(size):
        model.zero_grad(set_to_none=True)
        for part, share in split_rows(batch, size):
            (step_losses(model, part).total(1.0, 1.0, 0.0) * share).backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    whole, split = grads(None), grads(3)  # chunks of 3 and 1 rows
    assert sum(float(g.abs().sum()) for g in whole) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    run = dataclasses.replace(cfg, micro_batch_size=3, steps=2)  # and the loop runs it
    assert train(run, tmp_path, progress=False).steps_done == 2
    with pytest.raises(ConfigError, match="^micro_batch_size: must be an integer >= 1"):
        dataclasses.replace(cfg, micro_batch_size=0)


def test_split_rows_cuts_every_tensor_and_pair_and_weighs_by_rows():
    from r3mem.train.mixture import split_rows

    ids, mask = torch.arange(10).view(5, 2), torch.ones(5, 2, dtype=torch.long)
    batch = {"level": "recon", "ratio": 4.0, "ctx": (ids, mask), "target": (ids + 1, mask)}
    parts = split_rows(batch, 2)
    assert [share for _, share in parts] == [0.4, 0.4, 0.2]
    assert torch.equal(torch.cat([p["ctx"][0] for p, _ in parts]), ids)
    assert torch.equal(torch.cat([p["target"][1] for p, _ in parts]), mask)
    assert all(p["ratio"] == 4.0 and p["level"] == "recon" for p, _ in parts)
    assert split_rows(batch, None) == [(batch, 1.0)] and split_rows(batch, 5) == [(batch, 1.0)]


def test_recon_in_pass_gives_a_share_of_reconstruction_batches_text_before_and_the_step_uses_it(tiny_cfg_train):
    from r3mem.backbone import load_base
    from r3mem.train.mixture import TrainingMixture

    _, btok = load_base(tiny_cfg_train.model.base_model)
    cfg = dataclasses.replace(tiny_cfg_train, curriculum=({"until": 1.0, "levels": ["recon"]},),
                              model=dataclasses.replace(tiny_cfg_train.model, segment_len=64))  # room before a row
    batches = {p: [TrainingMixture(dataclasses.replace(cfg, recon_in_pass_p=p), btok).batch(s) for s in range(16)]
               for p in (0.0, 0.5, 1.0)}
    for b0, b5, b1 in zip(*batches.values()):  # the same rows to reconstruct
        assert torch.equal(b0["ctx"][0], b5["ctx"][0]) and torch.equal(b0["ctx"][0], b1["ctx"][0])
    assert not any("before" in b for b in batches[0.0])
    assert all("before" in b for b in batches[1.0])
    assert 0 < sum("before" in b for b in batches[0.5]) < 16
    seg = cfg.model.segment_len
    for b in batches[1.0]:  # each row's text before it and the row fit one segment
        assert torch.all(b["before"][1].sum(1) + b["ctx"][1].sum(1) <= seg)
    assert any(int(b["before"][1].sum()) > 0 for b in batches[1.0])
    with pytest.raises(ConfigError, match="^recon_in_pass_p: must be a number in"):
        TrainConfig(recon_in_pass_p=2)

    model = R3MemModel(tiny_model("llama", layers=4), cfg.model)  # deep enough for the text before to matter
    perturb_trainables(model)
    b = batches[1.0][0]
    with torch.no_grad():
        stepped = step_losses(model, b).backward
        direct = recon_losses(model, b["ctx"], b["target"], b["ratio"], bits=b["bits"], before=b["before"]).backward
        plain = recon_losses(model, b["ctx"], b["target"], b["ratio"], bits=b["bits"]).backward
    torch.testing.assert_close(stepped, direct)  # the training step passes the text before on
    assert not torch.isclose(stepped, plain)


def test_slots_first_gives_a_share_of_document_windows_pieces_and_the_step_folds_them(tiny_cfg_train):
    from r3mem.backbone import load_base
    from r3mem.losses import local_lm_losses
    from r3mem.train.mixture import TrainingMixture

    _, btok = load_base(tiny_cfg_train.model.base_model)
    cfg = dataclasses.replace(tiny_cfg_train, curriculum=({"until": 1.0, "levels": ["document"]},))
    batches = {p: [TrainingMixture(dataclasses.replace(cfg, lm_slots_first_p=p), btok).batch(s) for s in range(12)]
               for p in (0.0, 0.5, 1.0)}
    for b0, b5, b1 in zip(*batches.values()):
        assert torch.equal(b0["ids"], b5["ids"]) and torch.equal(b0["ids"], b1["ids"])
    assert not any("piece" in b for b in batches[0.0]) and all("piece" in b for b in batches[1.0])
    assert 0 < sum("piece" in b for b in batches[0.5]) < 12
    for b in batches[1.0]:
        assert b["piece"].shape == b["ids"].shape and torch.all(b["piece"][b["mask"] == 0] == -1)
    assert any(int((b["piece"][b["mask"] == 1] == -1).sum()) > 0 for b in batches[1.0])  # breaks are found
    with pytest.raises(ConfigError, match="^lm_slots_first_p: needs model.memory_mode 'kv'"):
        TrainConfig(lm_slots_first_p=0.5, model=dataclasses.replace(cfg.model, memory_mode="layerwise"))

    model = R3MemModel(tiny_model("llama", layers=4), dataclasses.replace(cfg.model, memory_mode="kv"))
    perturb_trainables(model)
    b = batches[1.0][0]
    terms = step_losses(model, b)
    direct = local_lm_losses(model, b["ids"], b["mask"], b["piece"], 1.0, 1.0, 0.0)
    torch.testing.assert_close(terms.forward, direct.forward)
    assert not torch.isclose(terms.forward, lm_losses(model, b["ids"], b["mask"], 1.0, 1.0, 0.0).forward)
    (terms.forward + terms.backward).backward()
    assert model.memory.write_emb.grad.abs().sum() > 0 and model.memory.init_mem.grad.abs().sum() > 0
    lora = [p.grad for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None]
    assert lora and sum(float(g.abs().sum()) for g in lora) > 0
