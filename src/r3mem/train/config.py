"""`TrainConfig`: everything a training run needs, validated and serialisable (YAML/JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from r3mem.config import R3MemConfig, apply_overrides, check, dataclass_from_dict

__all__ = ["TrainConfig", "Phase", "apply_overrides"]


@dataclass
class Phase:
    """Until `until` (fraction of total steps), draw batches from these levels ("recon": autoencoding of
    paragraphs and text chunks), compressed at these `ratios` (None: `train_ratios`)."""

    until: float
    levels: tuple[str, ...]
    ratios: tuple[float, ...] | None = None


@dataclass
class TrainConfig:
    model: R3MemConfig = field(default_factory=R3MemConfig)
    # Text sources: files or folders of .txt (Gutenberg headers stripped), or "builtin:sample".
    train_files: tuple[str, ...] = ("builtin:sample",)
    max_chars_per_file: int | None = None
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    # Rows per forward/backward pass: each drawn batch is run in chunks of this many rows whose
    # gradients add up to the batch's (the same data and, for rows of equal length, the same update;
    # less memory, as many examples). None: the whole batch in one pass.
    micro_batch_size: int | None = None
    lr: float = 2e-4
    # The memory's own parameters (write-token embeddings, initial memory, markers: `memory.*`) train
    # at lr x this; the LoRA adapters at lr. 1.0: one parameter group, as before this switch existed.
    memory_lr_scale: float = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Cooldown branch (warmup-stable-decay style): from step `cooldown_from` the learning rate falls
    # linearly from its scheduled value to `min_lr_ratio` x lr over `cooldown_steps`, and the run ends
    # there. The curriculum still refers to `steps`, so a branch started from a checkpoint of the
    # main run keeps that run's data mix; the main run itself goes on at its own schedule.
    cooldown_from: int | None = None
    cooldown_steps: int = 100
    precision: str = "fp32"  # fp32 | bf16 (autocast; trainable weights and optimizer stay fp32)
    device: str = "auto"  # auto (a CUDA GPU when there is one, else CPU) | cpu | cuda
    # Curriculum from document to entity level ("document" = segment-recurrent LM windows).
    curriculum: tuple[Phase, ...] = (Phase(0.2, ("document",)), Phase(0.6, ("document", "paragraph")),
                                     Phase(1.0, ("document", "paragraph", "entity")))
    lm_segments: int = 2  # segments per LM window
    # Fraction of document windows whose segments after the first are read after the true text of the
    # segment before, with the memory as usual (the memory is still updated from the segment alone):
    # the reversible read of `r3mem eval lm` reads them after the text recalled from the memory, so
    # this puts that read in the training distribution. 0: every window is read through the memory only.
    lm_read_previous: float = 0.0
    max_context_tokens: int = 128  # pair contexts are truncated to this
    max_query_tokens: int = 32
    train_ratios: tuple[float, ...] = (4.0, 8.0)  # compression ratios sampled for pair batches
    query_dropout: float = 0.5  # fraction of backward passes not conditioned on the query
    # Quantizer in the loop: this fraction of slot batches (reconstruction and pair levels) is expanded
    # from its memory tokens quantized to `quant_bits` (`quant.fake_quantize`, straight-through), so the
    # reader learns the memory a `memory_bits` engine stores. 16: never (the document state is never
    # quantized, as at use).
    quant_bits: int = 16
    quant_p: float = 0.5
    # One-pass hierarchy: this fraction of reconstruction batches writes each paragraph from a document
    # pass (`R3MemModel.compress_in_pass`), after 0..segment_len - len tokens of other text in its segment
    # and the initial memory, so that slots can be written from the keys/values of the pass that folds
    # the document (LOG 2026-12-07). 0: never (and the batches of older runs are unchanged).
    recon_in_pass_p: float = 0.0
    # Slots-first document fold: this fraction of document windows is folded from the keys/values the
    # paragraph slot passes give its text (`R3MemModel.fold_local`: each paragraph piece reads only
    # itself, every segment's write tokens the memory before it and its pieces), the fold a writer
    # that runs the slot passes first uses (LOG 2026-12-08). 0: never (older runs' batches unchanged).
    lm_slots_first_p: float = 0.0
    # Start from this adapter folder's weights (a committed adapter of an earlier run) when the run
    # folder has no checkpoint yet; the step count continues from the adapter's, the optimizer is new.
    # Its LoRA may be of a smaller rank than `model.lora_rank`: it is grown (train/warmstart.py).
    init_adapter: str | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = R3MemConfig.from_dict(self.model)
        self.train_files = tuple(self.train_files)
        self.train_ratios = tuple(float(r) for r in self.train_ratios)
        self.curriculum = tuple(Phase(**p) if isinstance(p, dict) else p for p in self.curriculum)
        self.curriculum = tuple(
            Phase(float(p.until), tuple(p.levels), None if p.ratios is None else tuple(float(r) for r in p.ratios))
            for p in self.curriculum
        )
        self.validate()

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
                     "lm_segments", "max_context_tokens", "max_query_tokens", "cooldown_steps"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1", v)
        check(
            self.micro_batch_size is None or (isinstance(self.micro_batch_size, int)
                                              and not isinstance(self.micro_batch_size, bool)
                                              and self.micro_batch_size >= 1),
            "micro_batch_size", "must be an integer >= 1 or null", self.micro_batch_size,
        )
        check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            "must be an integer >= 0",
            self.warmup_steps,
        )
        for name in ("lr", "memory_lr_scale", "weight_decay", "max_grad_norm", "min_lr_ratio", "query_dropout",
                     "lm_read_previous"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool), name, "must be a number", v)
        check(self.lr > 0, "lr", "must be > 0", self.lr)
        check(self.memory_lr_scale > 0, "memory_lr_scale", "must be > 0", self.memory_lr_scale)
        check(self.cooldown_from is None or (isinstance(self.cooldown_from, int) and not isinstance(
            self.cooldown_from, bool) and 0 <= self.cooldown_from < self.steps), "cooldown_from",
            f"must be empty or an integer step in [0, steps={self.steps})", self.cooldown_from)
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        check(self.device in ("auto", "cpu", "cuda"), "device", "must be 'auto', 'cpu' or 'cuda'", self.device)
        check(self.precision in ("fp32", "bf16"), "precision", "must be 'fp32' or 'bf16'", self.precision)
        check(len(self.train_files) > 0, "train_files", "must list at least one source", self.train_files)
        check(
            len(self.train_ratios) > 0 and all(r >= 1 for r in self.train_ratios),
            "train_ratios",
            "must be numbers >= 1",
            self.train_ratios,
        )
        check(0 <= self.query_dropout <= 1, "query_dropout", "must be in [0, 1]", self.query_dropout)
        check(self.quant_bits in (16, 8, 4, 2) and not isinstance(self.quant_bits, bool), "quant_bits",
               "must be one of 16, 8, 4, 2", self.quant_bits)
        check(isinstance(self.quant_p, (int, float)) and not isinstance(self.quant_p, bool)
               and 0 <= self.quant_p <= 1, "quant_p", "must be a number in [0, 1]", self.quant_p)
        check(isinstance(self.recon_in_pass_p, (int, float)) and not isinstance(self.recon_in_pass_p, bool)
              and 0 <= self.recon_in_pass_p <= 1, "recon_in_pass_p", "must be a number in [0, 1]",
              self.recon_in_pass_p)
        check(self.recon_in_pass_p == 0 or self.model.memory_mode == "kv", "recon_in_pass_p",
              "needs model.memory_mode 'kv'", self.recon_in_pass_p)
        check(isinstance(self.lm_slots_first_p, (int, float)) and not isinstance(self.lm_slots_first_p, bool)
              and 0 <= self.lm_slots_first_p <= 1, "lm_slots_first_p", "must be a number in [0, 1]",
              self.lm_slots_first_p)
        spread_kv = self.model.memory_mode == "kv" and self.model.memory_positions == "spread"
        check(self.lm_slots_first_p == 0 or spread_kv,
              "lm_slots_first_p", "needs model.memory_mode 'kv' and memory_positions 'spread'", self.lm_slots_first_p)
        check(0 <= self.lm_read_previous <= 1, "lm_read_previous", "must be in [0, 1]", self.lm_read_previous)
        check(len(self.curriculum) > 0, "curriculum", "must have at least one phase", self.curriculum)
        prev = 0.0
        for p in self.curriculum:
            check(prev < p.until <= 1.0, "curriculum", "phase 'until' values must increase within (0, 1]", p.until)
            check(
                len(p.levels) > 0 and set(p.levels) <= set(self.model.hierarchy_levels) | {"recon"},
                "curriculum",
                f"levels must be a non-empty subset of model.hierarchy_levels {self.model.hierarchy_levels} "
                "and 'recon'",
                p.levels,
            )
            check(p.ratios is None or (len(p.ratios) > 0 and all(r >= 1 for r in p.ratios)), "curriculum",
                   "phase ratios must be numbers >= 1", p.ratios)
            prev = p.until
        check(
            self.curriculum[-1].until == 1.0, "curriculum", "the last phase must end at 1.0", self.curriculum[-1].until
        )

    @property
    def last_step(self) -> int:
        """The step the run ends at: `steps`, or the end of the cooldown branch."""
        if self.cooldown_from is None:
            return self.steps
        return min(self.steps, self.cooldown_from + self.cooldown_steps)

    def phase_at(self, step: int) -> Phase:
        frac = step / self.steps
        return next((p for p in self.curriculum if frac < p.until), self.curriculum[-1])

    def levels_at(self, step: int) -> tuple[str, ...]:
        return self.phase_at(step).levels

    def ratios_at(self, step: int) -> tuple[float, ...]:
        return self.phase_at(step).ratios or self.train_ratios

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["curriculum"] = [
            {"until": p.until, "levels": list(p.levels), **({"ratios": list(p.ratios)} if p.ratios else {})}
            for p in self.curriculum
        ]
        for k in ("train_files", "train_ratios"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, data)
