"""The lab as a pytest fixture: skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outagemon.lab import Lab, LabUnavailable


@pytest.fixture
def lab() -> Iterator[Lab]:
    try:
        the_lab = Lab()
        the_lab.open()
    except LabUnavailable as e:
        pytest.skip(f"no network lab here: {e}")
    try:
        yield the_lab
    finally:
        the_lab.close()
