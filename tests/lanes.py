"""Lab scenarios run side by side: each in its own thread (its own namespace and daemon),
started by a module fixture for the tests selected in that module, each test waiting for
its own. Used by the lab test files (test_lab_e2e, test_lab_truth, test_alerting_lab,
test_durability)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from outagemon.testing.lab import Lab, LabUnavailable

T = TypeVar("T")


def selected(request: pytest.FixtureRequest, names: Collection[str]) -> list[str]:
    """The tests of the requesting module selected in this run whose names are in `names`,
    in the order of `names`' iteration. Under pytest-xdist each worker collects every
    test, so this holds only while a module's tests all run in one worker: `--dist
    loadfile`, as pyproject's addopts say."""
    chosen = {item.name for item in request.session.items if item.path == request.path}
    return [n for n in names if n in chosen]


@contextmanager
def side_by_side(run: Callable[[str], T], names: Iterable[str],
                 lanes: int) -> Iterator[dict[str, concurrent.futures.Future[T]]]:  # fmt: skip
    """`run(name)` for each name, `lanes` at a time; skips the module where no network
    lab can be made. Those not started yet are cancelled when the run is stopped."""
    try:
        with Lab():
            pass
    except LabUnavailable as e:
        pytest.skip(f"no network lab here: {e}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        futures = {name: pool.submit(run, name) for name in names}
        try:
            yield futures
        finally:
            for f in futures.values():
                f.cancel()
