"""`r3mem eval TASK --data PATH`: benchmark R³Mem against its ablations and baselines (JSON + PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r3mem.cli.common import EncodingOpt, ModelOpt, check_encoding, console, emit_json, load_engine
from r3mem.evaluate.common import EvalOptions  # stdlib only: `--help` stays fast

_D = EvalOptions()  # the defaults, written once (in EvalOptions) and shown in the help from there


def _numbers(name: str, spec: str | None, kind: type) -> tuple | None:
    if spec is None:
        return None
    try:
        return tuple(kind(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ValueError(
            f"{name}: expected comma-separated {'integers' if kind is int else 'numbers'}, got {spec!r}"
        ) from None


def evaluate(
    task: Annotated[str, typer.Argument(help="lm | recon | rag | kv | locomo | needle")],
    data: Annotated[
        Path,
        typer.Option(
            "--data", readable=False, help="Data file or folder in the task's format (see benchmarks/README.md)."
        ),
    ],
    model: ModelOpt = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model", envvar="R3MEM_BASE_MODEL", help="Base model for every method (registry name or HF folder)."
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="First N examples (books, paragraphs, questions, needle cells).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", readable=False, help="Also write the JSON here, and a PNG plot beside it.")
    ] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="Comma-separated methods (default: all).")] = None,
    method_model: Annotated[
        list[str] | None,
        typer.Option("--method-model", help="NAME=DIR adapter for an ablation or baseline (repeatable)."),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option("--budget", help="Context tokens given to the reader (default: 256; lm: the memory size)."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help=f"Slots / chunks recalled per question (default: {_D.top_k}).")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help=f"Answer length in tokens (default: {_D.max_new_tokens}).")
    ] = None,
    chunk_words: Annotated[
        int | None, typer.Option("--chunk-words", help=f"Retrieval chunk size in words (default: {_D.chunk_words}).")
    ] = None,
    ratios: Annotated[str | None, typer.Option("--ratios", help="recon: compression ratios, e.g. 4,8.")] = None,
    lengths: Annotated[str | None, typer.Option("--lengths", help="needle: context lengths in tokens.")] = None,
    depths: Annotated[str | None, typer.Option("--depths", help="needle: needle depths in [0, 1].")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="lm: tokens per book (default: all).")] = None,
    segment_len: Annotated[
        int | None, typer.Option("--segment-len", help="lm: segment length (default: the adapter's).")
    ] = None,
    recall_tokens: Annotated[
        int | None,
        typer.Option("--recall-tokens", help="lm: tokens recalled from the memory before each segment, for "
                     "methods with a backward path (default: the segment length; 0: off)."),
    ] = None,
    select: Annotated[
        str | None,
        typer.Option("--select", help="Memory methods: how slots are found (hybrid | dense | lexical | likelihood; "
                     "default: hybrid when the memory has retrieval keys)."),
    ] = None,
    answer_read: Annotated[
        str | None,
        typer.Option("--answer-read", help="Memory methods, QA: text (slots expanded into text; the default) | checked "
                     "(the same text, each expansion checked against the document it was written from and decoded "
                     "only where it differs) | cache "
                     "(the reader reads the slots' keys and values) | source (the chosen slots' own text, as a store "
                     "keeps it)."),
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option("--min-confidence", help="Memory methods, QA text reads: a slot whose calibrated confidence "
                     "is under this is read from the text it was written from instead of its expansion."),
    ] = None,
    compute_dtype: Annotated[
        str | None, typer.Option("--compute-dtype", help="float32 | bfloat16 (autocast) | auto (bfloat16 where the "
                                 "hardware has it) for every model; default auto (tiny test models: float32).")
    ] = None,
    memory_cache: Annotated[
        Path | None,
        typer.Option("--memory-cache", readable=False, help="Memory methods, QA: keep written memories in this "
                     "folder and reuse them (runs that change only how questions are answered write once)."),
    ] = None,
    per_doc: Annotated[
        int | None, typer.Option("--per-doc", help="locomo: first N scored questions of each conversation.")
    ] = None,
    distractors: Annotated[
        int | None, typer.Option("--distractors", help="rag: passages of other questions around the gold one "
                                 f"(default: {_D.distractors}; 0: the oracle passage alone).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help=f"Torch device for every model (default: {_D.device}).")
    ] = None,
    memory_bits: Annotated[
        int | None, typer.Option("--memory-bits", help="r3mem: store slot memory tokens at 16 | 8 | 4 | 2 bits "
                                 "(default: the adapter config's).")
    ] = None,
    levels: Annotated[
        str | None, typer.Option("--levels", help="r3mem: hierarchy levels written, comma-separated, e.g. "
                                 "document,paragraph (default: the adapter config's).")
    ] = None,
    encoding: EncodingOpt = "utf-8",
) -> None:
    """Evaluate a task for every method in one run; prints a JSON document (config, versions, commit, metrics)."""
    from r3mem.text import text_encoding

    with text_encoding(check_encoding(encoding)):
        from r3mem.engine import default_adapter_dir
        from r3mem.evaluate.runner import check_inputs, parse_method_models, parse_methods, run_eval

        given = {  # options left out keep EvalOptions' defaults: each default is written once, there
            "limit": limit, "per_doc": per_doc, "budget": budget, "top_k": top_k, "max_new_tokens": max_new_tokens,
            "chunk_words": chunk_words, "max_tokens": max_tokens, "segment_len": segment_len,
            "recall_tokens": recall_tokens, "device": device, "select": select, "answer_read": answer_read,
            "memory_cache": str(memory_cache) if memory_cache else None, "distractors": distractors,
            "min_confidence": min_confidence,
            "ratios": _numbers("--ratios", ratios, float), "lengths": _numbers("--lengths", lengths, int),
            "depths": _numbers("--depths", depths, float),
        }
        opts = EvalOptions(**{k: v for k, v in given.items() if v is not None})
        chosen = parse_methods(methods)
        adapters = parse_method_models(method_model)
        checked = check_inputs(task, data, opts, model)
        engine = load_engine(model, base_model, compute_dtype, memory_bits=memory_bits,
                             levels=tuple(levels.split(",")) if levels else None)
        opts.compute_dtype = engine.config.compute_dtype  # what "auto" resolved to, for the other engines
        if model is not None:
            source = str(model)
        elif (default_adapter_dir() / "r3mem_adapter.json").exists() and engine.trained:
            source = str(default_adapter_dir())
        else:
            source = None  # untrained adapters; the JSON says adapter_trained: false
        doc = run_eval(
            task,
            data,
            engine=engine,
            methods=chosen,
            opts=opts,
            method_models=adapters,
            model_source=source,
            base_model=base_model,
            out=out,
            checked=checked,
            log=lambda s: console.print(f"[dim]{s}[/]"),
        )
        emit_json(doc)
