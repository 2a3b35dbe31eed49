"""Numbers in the config: never nan or infinity, always within a documented bound.

The walks below go over every schema of `outagemon.config` as it is, so a key added later
is covered without touching this file; a new schema fails until it is placed here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outagemon import config
from outagemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK = 'url = "http://127.0.0.1:9/hook"\nsecret = "0123456789abcdef0123456789abcdef"\n'
TOKEN = 'name = "ivr"\ntoken = "0123456789abcdef0123456789abcdef"\nrole = "read"\n'
# TOML spellings of values no key should take: not finite, or past any sensible bound.
BAD = ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e30", "-1e30", "1e308",
       "9223372036854775807", "-9223372036854775808"]  # fmt: skip


def schemas() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(config).items()
        if name.endswith("SCHEMA") and isinstance(value, dict)
    }


def places() -> Iterator[tuple[str, str, str, config.Check]]:
    """(where a problem names it, the key, a TOML text putting {value} there, its check)."""
    for section, keys in config.SCHEMA.items():
        for key, check in keys.items():
            yield f"[{section}] ", key, f"[{section}]\n{key} = {{value}}\n", check
    for key, check in config.NOTIFY_SCHEMA.items():
        yield "[notify] ", key, f"[notify]\n{key} = {{value}}\n", check
    for key, check in config.WEBHOOK_SCHEMA.items():
        entry = "".join(line + "\n" for line in WEBHOOK.splitlines() if line.split()[0] != key)
        text = "[[notify.webhooks]]\n" + entry.replace("{", "{{").replace("}", "}}")
        yield "[[notify.webhooks]] number 1: ", key, text + f"{key} = {{value}}\n", check
    for key, check in config.TOKEN_SCHEMA.items():
        entry = "".join(line + "\n" for line in TOKEN.splitlines() if line.split()[0] != key)
        yield (
            "[[auth.tokens]] number 1: ",
            key,
            f"[[auth.tokens]]\n{entry}{key} = {{value}}\n",
            check,
        )


PLACES = list(places())


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("/etc/om.toml"))
    return info.value.problems


def test_every_schema_is_walked() -> None:
    # A schema added to config.py must be placed in `places()` above to be walked.
    assert set(schemas()) == {"SCHEMA", "NOTIFY_SCHEMA", "WEBHOOK_SCHEMA", "TOKEN_SCHEMA"}
    flat = [*config.SCHEMA.values(), config.NOTIFY_SCHEMA, config.WEBHOOK_SCHEMA,
            config.TOKEN_SCHEMA]  # fmt: skip
    assert len(PLACES) == sum(len(keys) for keys in flat) > 50


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize(
    ("where", "key", "text"), [p[:3] for p in PLACES], ids=[p[0] + p[1] for p in PLACES]
)
def test_no_key_takes_a_value_that_is_not_finite_or_past_any_bound(
    where: str, key: str, text: str, value: str
) -> None:
    found = problems_of(text.format(value=value))
    named = [p for p in found if p.startswith(f"/etc/om.toml: {where}{key} must ")]
    assert named, found
    # One sentence: what was wrong, and the value (a secret's kind only), then a full stop.
    sentence = named[0]
    assert sentence.endswith("."), sentence
    assert "\n" not in sentence and "Traceback" not in sentence
    if key in config.SECRET_KEYS:
        assert "not a number (its value is not shown)" in sentence
    else:
        shown = repr(tomllib.loads(f"v = {value}")["v"])
        assert sentence.endswith(f", not {shown}."), (sentence, shown)


def numeric_keys() -> Iterator[tuple[str, str, config.Check]]:
    """Every key taking a number: those whose check accepts some plain number."""
    for where, key, _text, check in PLACES:
        if any(check(v) is None for v in (0, 1e-6, 0.1, 0.5, 1, 2, 10, 100, 1 << 20)):
            yield where.strip(), key, check


NUMERIC = list(numeric_keys())


def test_the_numeric_keys_are_found() -> None:
    # The walk below must not pass by finding nothing to walk.
    found = {f"{where} {key}" for where, key, _ in NUMERIC}
    assert {"[probe] interval", "[callers] min_callers", "[notify] give_up_after",
            "[history] timeout", "[cluster] lease", "[callers] chance"} <= found  # fmt: skip
    assert len(found) >= 30


@pytest.mark.parametrize(
    ("where", "key", "check"), NUMERIC, ids=[f"{w} {k}" for w, k, _ in NUMERIC]
)
def test_every_numeric_check_refuses_what_is_not_finite(
    where: str, key: str, check: config.Check
) -> None:
    for value in (math.nan, math.inf, -math.inf, 1e30, -1e30, 10**18, -(10**18)):
        reason = check(value)
        assert reason is not None and reason.startswith("must "), (value, reason)


def readme_bounds() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text[text.index("| key | from | to |") :].split("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|$", part, re.M)
    assert rows, "the README's table of bounds is missing"
    return {key: (low.strip(), high.strip()) for key, low, high in rows}


def test_every_numeric_key_has_its_bounds_in_the_readme_as_the_code_has_them() -> None:
    bounds = readme_bounds()
    named = {f"{where} {key}" for where, key, _ in NUMERIC}
    assert named == set(bounds), named ^ set(bounds)
    for where, key, check in NUMERIC:
        low, high = bounds[f"{where} {key}"]
        if low == "more than 0":
            assert check(0) is not None and check(1e-3) is None, (key, low)
        elif "." in low.split()[0]:  # a fraction, such as "0.001 (1 ms)"
            least = float(low.split()[0])
            assert check(least) is None and check(least * 0.999) is not None, (key, low)
            assert check(0) is not None, (key, low)
        else:
            least = int(low)
            assert check(least) is None and check(least - 1) is not None, (key, low)
        if high.startswith("less than "):
            most = float(high.removeprefix("less than "))
            assert check(most) is not None and check(most * 0.999) is None, (key, high)
        else:
            top = int(high.split()[0].rstrip(","))
            assert check(top) is None and check(top + 1) is not None, (key, high)


def test_the_defaults_are_within_the_bounds() -> None:
    defaults = config.Config(path=Path("/etc/om.toml"))
    for section, keys in config.SCHEMA.items():
        values = dataclasses.asdict(getattr(defaults, section))
        for key, check in keys.items():
            if key in values and isinstance(values[key], int | float):
                assert check(values[key]) is None, (section, key, values[key])
    notify = dataclasses.asdict(defaults.notify)
    for key, check in config.NOTIFY_SCHEMA.items():
        if isinstance(notify.get(key), int | float):
            assert check(notify[key]) is None, (key, notify[key])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outagemon", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)  # fmt: skip


def test_check_config_refuses_a_nan_interval_with_a_sentence(tmp_path: Path) -> None:
    # The reported case: "valid" and "probe: every nan s", then `run` died in int(nan).
    path = tmp_path / "om.toml"
    path.write_text("[probe]\ninterval = nan\n[callers]\nexpire_after = inf\n", encoding="utf-8")
    # A topology beside it (the default file name): its problems would be listed too.
    (tmp_path / "topology.yaml").write_text("nodes:\n- {id: core-1, kind: core}\n")
    done = run_cli("check-config", "-c", str(path))
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        f"{path}: [probe] interval must be a finite number of seconds, not nan.",
        f"{path}: [callers] expire_after must be a finite number of seconds, not inf.",
    ], done.stderr
    assert "valid" not in done.stdout


def test_a_list_names_every_bad_item() -> None:
    found = problems_of('[notify]\nlabels = ["district-x", "1bad", "ok_one", "north"]\n')
    assert len(found) == 1, found
    assert "[notify] labels must be a list of topology label names ('district-x' and '1bad' " \
        "must be a label name" in found[0], found  # fmt: skip
    assert "'ok_one' must" not in found[0]
    # Different reasons are given apart; a URL's password is never repeated back.
    found = problems_of(
        '[notify]\nalertmanagers = ["http://u:pw@am:9093", "am2:9093", "http://am3"]\n'
    )
    assert "'http://***@am:9093' must not hold a user or password" in found[0], found
    assert "; 'am2:9093' must be an http:// or https:// URL with a host" in found[0], found
    assert "pw" not in found[0]
    # A long list: the first ten named, the rest counted.
    many = ", ".join(f'"{i}x"' for i in range(25))
    found = problems_of(f"[notify]\nlabels = [{many}]\n")
    named = found[0].partition(", not [")[0]  # the value itself is repeated after it
    assert "'9x' must be a label name" in named and "'10x'" not in named, found
    assert named.endswith("; and 15 more)"), found


def warnings_of(text: str) -> tuple[str, ...]:
    return config.parse(text, Path("/etc/om.toml")).warnings


def test_alerts_without_external_url_are_warned_about() -> None:
    for text in (
        '[notify]\nalertmanagers = ["http://127.0.0.1:9093"]\n',
        "[[notify.webhooks]]\n" + WEBHOOK,
    ):
        said = [w for w in warnings_of(text) if "external_url" in w]
        assert len(said) == 1, warnings_of(text)
        assert said[0].startswith("/etc/om.toml: [notify] external_url is not set: ")
        assert "generatorURL" in said[0] and "http://outagemon.invalid" in said[0]
        assert "incident page's base URL" in said[0]
    # Set, or nothing to send: no warning.
    with_url = '[notify]\nexternal_url = "https://noc.example"\nalertmanagers = ["http://a"]\n'
    assert not [w for w in warnings_of(with_url) if "external_url" in w]
    assert not [w for w in warnings_of('[notify]\nlabels = ["district"]\n') if "external_url" in w]
    assert not [w for w in warnings_of("") if "external_url" in w]
