"""Every relative link in README.md and docs/*.md reaches a file that exists, and a ``#anchor`` a heading there.

A page renamed, a results file not committed or a heading reworded breaks a link silently on GitHub; here it fails.
Anchors follow GitHub's rule for headings (lower case; punctuation other than ``-`` and ``_`` dropped; spaces to
``-``; a repeated heading gets ``-1``, ``-2``). Links to the web (``http``, ``mailto``) are not followed: CI has no
internet.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")   # [text](target), not images' ![...](...)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)   # inline code: `[x](y)` is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slug_follows_githubs_rule():
    assert slug("BrEaST -> UDIAT on a CPU (`breast_cpu`)") == "breast---udiat-on-a-cpu-breast_cpu"
    assert slug("Thyroid: Salama et al.'s rows on DDTI (`thyroid_cpu`)") == \
        "thyroid-salama-et-als-rows-on-ddti-thyroid_cpu"
    assert slug("Several training seeds: `nnunet_mtl average-seeds`") == \
        "several-training-seeds-nnunet_mtl-average-seeds"


def test_a_repeated_heading_gets_a_number(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n")
    assert anchors(page) == {"a", "notes", "notes-1"}


def test_links_skip_code_images_and_the_web(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](b.md) ![img](c.png) `[x](y.md)` [w](https://x.org)\n```\n[z](z.md)\n```\n")
    assert links(page) == ["b.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
