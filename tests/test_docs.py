"""The reference lives in the repository: every document that code, messages and docs point at exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"\b(docs/[\w./-]+\.md)(#[\w-]+)?")


def cited_pages():
    """(file, page, anchor) for every docs/*.md named in dltool/, README.md and docs/."""
    sources = [*sorted((ROOT / "dltool").rglob("*.py")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for source in sources:
        for page, anchor in CITED.findall(source.read_text(encoding="utf-8")):
            yield source.relative_to(ROOT), page, anchor


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {"#" + re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_cited_page_and_anchor_exists():
    missing = [f"{source}: {page}{anchor}" for source, page, anchor in cited_pages()
               if not (ROOT / page).is_file() or (anchor and anchor not in anchors(ROOT / page))]
    assert list(cited_pages()), "nothing cites docs/: the pattern no longer finds the citations"
    assert missing == []


def test_nothing_points_at_a_document_outside_the_repository():
    sources = [*sorted((ROOT / "dltool").rglob("*.py")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [str(s.relative_to(ROOT)) for s in sources if "DESIGN.md" in s.read_text(encoding="utf-8")] == []
