"""The README and docs/: every relative link and anchor resolves; the README stays a guide."""

import re
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    found, seen = set(), {}
    for title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = "".join(c for c in unicodedata.normalize("NFKC", title.lower()) if c.isalnum() or c in " -_")
        slug = slug.replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in LINK.findall(text)]


def test_every_relative_link_and_anchor_resolves():
    """A link to a file names one that exists; a link to an anchor names a heading of that page."""
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_link_check_can_fail(tmp_path):
    """A page with a link to a missing file and a missing heading is caught."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nowhere)\n", encoding="utf-8")
    assert links(page) == ["missing.md", "#title", "#nowhere"]
    assert anchors(page) == {"title"}


def test_readme_is_a_guide():
    """At most 300 lines, the two commands on its first screen, and no lab-notebook wording."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    first_screen = "\n".join(readme.splitlines()[:30])
    assert "accelerate launch run_finetune.py recipes/music_abc.json" in first_screen
    assert "python -m pytest" in first_screen
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\b[Ii]ssue \d+|this round", text), page.name
