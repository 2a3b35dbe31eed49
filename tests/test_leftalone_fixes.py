"""Defects noted in earlier sessions and left alone, each pinned by the behaviour it broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from outagemon import config, probecmd
from outagemon.errors import ConfigError


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("/etc/om.toml"))
    return info.value.problems


@pytest.mark.parametrize("value", ["0.0005", "1e-6", "0.000999"])
def test_a_probe_timeout_shorter_than_a_millisecond_is_refused_saying_why(value: str) -> None:
    (problem,) = _problems(f"[probe]\ninterval = 1\ntimeout = {value}\n")
    assert problem.startswith("/etc/om.toml: [probe] timeout must be from 0.001 (1 ms: "), problem
    assert "whole milliseconds" in problem and problem.endswith(f", not {float(value)!r}."), problem


def test_the_probe_timeout_bound_is_the_probe_commands() -> None:
    # `outagemon probe -t` refuses below MIN_TIMEOUT_MS for the same engine's reason.
    assert config.PROBE_TIMEOUT_MIN * 1000 == probecmd.MIN_TIMEOUT_MS
    accepted = config.parse("[probe]\ninterval = 1\ntimeout = 0.001\n", Path("/etc/om.toml"))
    assert accepted.probe.timeout == 0.001
