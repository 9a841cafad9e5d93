#!/usr/bin/env python3
"""Regenerate the results table in benchmarks/README.md from benchmarks/*/results/*.json.

    python benchmarks/make_table.py            # rewrite the table between the markers in README.md
    python benchmarks/make_table.py --stdout   # print it instead
    python benchmarks/make_table.py --root DIR --readme FILE

Every row is one method of one result file (written by `r3mem eval ... --out`; the "run" column is
the file's name), with the headline numbers of that method, its memory per document, the data file,
and the commit and date of the run that produced the figure. Skipped methods are not listed. Works
with zero or more result files; files that are not r3mem eval results are reported on stderr and
ignored. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADER = ("| task | run | method | result | memory tokens / doc | data | n | commit | date |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
EMPTY = "_No results yet: run a benchmark with `--out benchmarks/<task>/results/<name>.json`, then this script._"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def load_results(root: Path) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(root.glob("*/results/*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            print(f"warning: {path}: not readable JSON ({e}); skipped", file=sys.stderr)
            continue
        if not isinstance(doc, dict) or doc.get("format") != "r3mem-eval" or not isinstance(doc.get("methods"), dict):
            print(f"warning: {path}: not an r3mem eval result; skipped", file=sys.stderr)
            continue
        out.append((path, doc))
    return out


def rows(results: list[tuple[Path, dict]], root: Path) -> list[str]:
    lines = []
    for path, doc in results:
        git = doc.get("git") or {}
        commit = (git.get("commit") or "unknown")[:8] + ("+dirty" if git.get("dirty") else "")
        date = str(doc.get("created") or "")[:10] or "–"
        data = Path(str(doc.get("data", ""))).name or "–"
        rel = path.relative_to(root).as_posix()
        for method, res in doc["methods"].items():
            if not isinstance(res, dict) or "skipped" in res:
                continue
            summary = dict(res.get("summary") or {})
            metrics = res.get("metrics") or {}
            gain = metrics.get("memory_gain_nll_per_token")
            if gain is not None:  # lm: what carried memory adds over the same adapter with memory reset
                summary["memory gain (nats/token)"] = gain
            if metrics.get("ppl_recall") is not None:  # lm: memory plus the text recalled from it
                summary["ppl with recalled text"] = metrics["ppl_recall"]
            result = ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()) or "–"
            lines.append(
                f"| {doc.get('task', '?')} | {path.stem} | {method} | {result} | "
                f"{_fmt(res.get('memory_tokens_per_doc'))} | "
                f"{data} | {_fmt(res.get('n_examples'))} | {commit} | [{date}]({rel}) |"
            )
    return lines


def table(root: Path) -> str:
    body = rows(load_results(root), root)
    return HEADER + "\n" + "\n".join(body) if body else EMPTY


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here, help="benchmarks folder holding <task>/results/*.json")
    ap.add_argument("--readme", type=Path, default=None, help="file with the table markers (default: ROOT/README.md)")
    ap.add_argument("--stdout", action="store_true", help="print the table instead of rewriting the README")
    args = ap.parse_args(argv)
    text = table(args.root)
    if args.stdout:
        print(text)
        return 0
    readme = args.readme or args.root / "README.md"
    try:
        old = readme.read_text(encoding="utf-8")
    except OSError as e:
        print(f"error: {readme}: cannot read ({e.strerror})", file=sys.stderr)
        return 1
    if BEGIN not in old or END not in old or old.index(BEGIN) > old.index(END):
        print(f"error: {readme}: no '{BEGIN}' ... '{END}' markers", file=sys.stderr)
        return 1
    head, rest = old.split(BEGIN, 1)
    new = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    readme.write_text(new, encoding="utf-8")
    print(f"{readme}: table updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
