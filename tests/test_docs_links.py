"""The documents a new user follows lead somewhere: the README's links stay inside the
repository, and what the unit's Documentation= names is installed by the README's steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SHARED_CONTRACT = Path("/work/shared/spec/CONTRACT.md")


def test_every_relative_link_of_the_readme_is_a_file_of_the_repository() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)", README)
    relative = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert relative, "the README links at least the contract"
    for target in relative:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), f"{target} is outside the repository"
        assert path.exists(), f"{target} does not exist"
    assert "../shared" not in README


def test_the_units_documentation_is_installed_by_the_readmes_steps() -> None:
    unit = (ROOT / "systemd" / "outagemon.service").read_text()
    documentation = re.findall(r"^Documentation=(.+)$", unit, re.M)
    assert documentation
    for url in documentation[0].split():
        if not url.startswith("file://"):
            continue
        installed = url.removeprefix("file://")
        steps = re.findall(r"^install -D -m 0644 (\S+) (\S+)$", README, re.M)
        sources = [src for src, dest in steps if dest == installed]
        assert sources, f"no install step of the README puts a file at {installed}"
        assert (ROOT / sources[0]).is_file()


@pytest.mark.skipif(not SHARED_CONTRACT.exists(), reason="the team's shared contract is not here")
def test_the_contract_in_docs_is_the_shared_one() -> None:
    copy = (ROOT / "docs" / "CONTRACT.md").read_text()
    assert copy.split("-->\n\n", 1)[1] == SHARED_CONTRACT.read_text()
