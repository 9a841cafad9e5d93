"""The documentation site's sources (mkdocs.yml, docs/): every `::: dotted.name` directive of the API pages names
an importable object, and every page in the nav exists, so a renamed function fails the tests and not only the
docs build (`bash scripts/build_docs.sh`)."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^:::\s+(\S+)\s*$", re.MULTILINE)


def resolve(dotted: str) -> object:
    """The object a mkdocstrings identifier names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name) and exc.name.startswith(parts[0]):
                continue  # this prefix is not a module (or not one of ours): try a shorter one
            raise  # a module of ours failed to import one of its dependencies
        for attr in parts[i:]:
            obj = getattr(obj, attr)  # AttributeError names what is missing
        return obj
    raise ModuleNotFoundError(f"no importable module in {dotted!r}")


def directives(pages: list[Path]) -> list[tuple[str, str]]:
    return [(page.name, name) for page in pages for name in DIRECTIVE.findall(page.read_text(encoding="utf-8"))]


def nav_pages(nav: object) -> list[str]:
    """The page paths of a mkdocs nav (nested lists of {title: path-or-section}, or bare paths)."""
    if isinstance(nav, str):
        return [] if re.match(r"^[a-z]+://", nav) else [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    raise TypeError(f"unexpected nav entry {nav!r}")


API_PAGES = sorted((DOCS / "api").glob("*.md"))
API_DIRECTIVES = directives(API_PAGES)


def test_api_pages_have_directives():
    assert API_PAGES, "docs/api/ has no pages"
    assert len(API_DIRECTIVES) >= 10


@pytest.mark.parametrize("page,name", API_DIRECTIVES, ids=[f"{p}:{n}" for p, n in API_DIRECTIVES])
def test_directive_names_an_object(page, name):
    assert name.startswith("r3mem"), f"{page}: {name} is not in the r3mem package"
    resolve(name)


def test_resolve_refuses_a_missing_name():
    with pytest.raises(AttributeError):
        resolve("r3mem.engine.R3Mem.no_such_method")
    with pytest.raises(ModuleNotFoundError):
        resolve("r3mem_no_such_package.thing")


def test_nav_pages_exist():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = nav_pages(config["nav"])
    assert "index.md" in pages
    missing = [p for p in pages if not (ROOT / config.get("docs_dir", "docs") / p).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    unlisted = [p.relative_to(DOCS).as_posix() for p in API_PAGES if p.relative_to(DOCS).as_posix() not in pages]
    assert not unlisted, f"API pages missing from mkdocs.yml nav: {unlisted}"
