"""The README and docs/ (short enough to read, every link resolving, every generated table as the code
makes it), and the gates' one rule a tool cannot check: a type: ignore says why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks import ci
from tasks.model import options, settings

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The tables made from a declaration: the page, its marker's name, and what makes it.
GENERATED = [
    ("docs/matrix.md", "settings table", "tasks.model.settings", settings.table),
    ("docs/graph.md", "options table", "tasks.model.options", options.table),
    ("docs/gitlab-ci.md", "secrets table", "tasks.ci", ci.secrets_table),
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", CODE.sub("", page.read_text()), re.M):
        name, n = slug(heading), 1
        while name in found:  # GitHub numbers repeated headings
            name, n = f"{slug(heading)}-{n}", n + 1
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text()))


def test_the_readme_fits_on_a_few_screens():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # another site: not reachable from here
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Only heading\n\n[x](a.md#only-heading) [y](a.md#gone) `[z](nowhere.md)`\n")
    assert links(tmp_path / "a.md") == ["a.md#only-heading", "a.md#gone"]
    assert anchors(tmp_path / "a.md") == {"only-heading"}
    assert slug("Options (`doit name=value`)") == "options-doit-namevalue"


@pytest.mark.parametrize("page, name, module, make", GENERATED, ids=[g[1] for g in GENERATED])
def test_generated_tables_are_the_declarations(page, name, module, make):
    text = (REPO / page).read_text()
    start = text.index(f"<!-- {name}: python -m {module} -->\n")
    end = text.index(f"<!-- end of {name} -->")
    assert text[start:end].split("\n", 1)[1] == make(), f"{page}: run python -m {module} and paste its table"


def test_every_page_is_linked_from_the_readme():
    readme = links(REPO / "README.md")
    for page in PAGES[1:]:
        assert any(target.partition("#")[0] == f"docs/{page.name}" for target in readme), page.name


def test_every_type_ignore_says_why():
    """mypy covers every Python file; where it is told to look away, a reason stands beside it."""
    files = [p for p in REPO.glob("**/*.py") if not {".venv", "build", "storage"} & set(p.relative_to(REPO).parts)]
    bare = [
        f"{path.relative_to(REPO)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"# type: ignore(\[[^\]]*\])?\s*$", line)
    ]
    assert not bare, f"a type: ignore without a reason: {bare}"
