"""`r3mem demo`: write a book excerpt into memory, recall a paragraph, report fidelity."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from r3mem.cli.common import (
    DEFAULT_ENCODING,
    BaseOpt,
    EncodingOpt,
    JsonOpt,
    ModelOpt,
    decode_text,
    emit_json,
    load_engine,
    out,
    read_bytes,
)


def _demo_text(path: Path | None, encoding: str = DEFAULT_ENCODING) -> tuple[str, str]:
    from r3mem.text import strip_gutenberg

    if path is None:
        ref = resources.files("r3mem") / "assets" / "pg19_10356_excerpt.txt"
        return ref.read_text(encoding="utf-8"), "PG-19 #10356 excerpt (held out from training)"
    return strip_gutenberg(decode_text(read_bytes(path), str(path), encoding)), str(path)


def demo(
    text: Annotated[
        Path | None,
        typer.Option("--text", readable=False, help="Text file to memorise (default: bundled PG-19 excerpt)."),
    ] = None,
    paragraph: Annotated[int, typer.Option("--paragraph", help="Index of the paragraph to recall.")] = 1,
    max_chars: Annotated[int, typer.Option("--max-chars", help="Only write the first N characters.")] = 6000,
    save: Annotated[Path | None, typer.Option("--save", readable=False, help="Also save the memory file here.")] = None,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
    json_out: JsonOpt = False,
    encoding: EncodingOpt = DEFAULT_ENCODING,
) -> None:
    """Write a PG-19 book excerpt into memory and recall one paragraph from it."""
    from r3mem.evaluate.recon import demo_report

    body, source = _demo_text(text, encoding)  # a bad file is refused before the model loads
    engine = load_engine(model, base_model)
    body = body[:max_chars]
    mem, result = demo_report(engine, body, paragraph, source)
    idx, original, recalled = result["recalled_paragraph"], result["original"], result["recalled"]
    slot = mem.paragraphs[idx]
    mem_tokens = result["paragraph_memory_tokens"]
    if save:
        engine.save(mem, save)
        result["saved_to"] = str(save)
    if json_out:
        emit_json(result)
        return
    out.print(f"source            : {source}")
    out.print(
        f"adapter           : {'trained' if engine.trained else 'UNTRAINED (random init)'} ({engine.adapter_hash})"
    )
    out.print(
        f"written           : {len(body)} chars, {mem.n_tokens} tokens, "
        f"{len(mem.paragraphs)} paragraph slots, {len(mem.entities)} entity slots"
    )
    out.print(
        f"compression ratio : {result['compression_ratio']}x "
        f"(paragraph level: {mem.n_tokens} tokens -> {mem_tokens} memory tokens)"
    )
    bits = engine.config.memory_bits
    out.print(f"memory size       : {mem.state_bytes() / 1e6:.2f} MB "
              f"({f'{bits} bits' if bits < 16 else 'float16'} per number; text: {len(body.encode()) / 1e3:.1f} kB)")
    out.print(
        f"\n--- original text of paragraph slot {idx} ({slot.key}) ---\n{original}\n\n"
        f"--- recalled from memory ---\n{recalled}\n"
    )
    out.print(
        f"reconstruction    : token exact match {result['token_exact_match']:.3f}, ROUGE-L {result['rouge_l']:.3f}"
    )
    conf = result["recall_confidence"]
    if conf["geo_mean"] is not None:
        calibrated = f", calibrated P(exact) {conf['p_exact']:.3f}" if conf.get("p_exact") is not None else ""
        out.print(f"recall confidence : geometric-mean token probability {conf['geo_mean']:.3f}, "
                  f"lowest {conf['min']:.3f}{calibrated}")
