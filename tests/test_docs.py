"""The README's commands, links and length; CI runs the README's test command verbatim."""
from __future__ import annotations

import re

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def fenced_commands(text: str) -> list[str]:
    """The lines of every ```bash block."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(c for c in fenced_commands(README) if c.endswith("python -m pytest"))
    assert "ruff check ." in test_command
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_is_short_and_every_link_resolves():
    assert len(README.splitlines()) <= 300
    targets = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+|LICENSE)\)", README)
    assert "docs/benchmarks.md" in targets and "LICENSE" in targets
    missing = [t for t in targets if not (REPO_ROOT / t).exists()]
    assert not missing, missing


def test_every_docs_page_is_linked_from_the_readme():
    pages = {f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")}
    assert pages, "docs/ has no pages"
    unlinked = sorted(p for p in pages if f"]({p})" not in README)
    assert not unlinked, unlinked


def test_license_is_apache_2():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "endofuse authors" in text
