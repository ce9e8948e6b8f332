"""docs/changelog.md is the site's copy of CHANGELOG.md: the two never drift apart."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_changelog_mirrors_the_changelog() -> None:
    assert (ROOT / "docs" / "changelog.md").read_text() == (ROOT / "CHANGELOG.md").read_text()


def test_changelog_keeps_an_unreleased_section_with_one_added_and_one_fixed() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert text.count("### Added") == 1
    assert text.count("### Fixed") == 1
