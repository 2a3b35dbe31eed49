"""Finding 7: one bad value (a NUL byte, a lone surrogate, another control character) in
the CRM export or the topology is a sentence about that row or node, never a stop of all
persistence; check-config reports it too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outagemon.core import directory, topology
from outagemon.core.text import bad_character
from outagemon.errors import TopologyError
from tests.world import SUBSCRIBERS, TOPOLOGY


def test_bad_characters_are_named_with_their_place() -> None:
    assert bad_character("ул. Ленина, д. 5") is None
    assert bad_character("a\x00b") == "a NUL byte (U+0000) at character 2"
    assert bad_character("x\ud800") == "a lone surrogate (U+D800) at character 2"
    assert bad_character("bell\x07") == "a control character (U+0007) at character 5"
    assert bad_character("del\x7f") == "a control character (U+007F) at character 4"
    assert bad_character("\u2028 a line separator is text") is None


@pytest.mark.parametrize(
    ("row", "sentence"),
    [
        ('3001,+79210000101,"ул. Ленина, д. 5",1\x00,', "flat holds a NUL byte (U+0000)"),
        ('3002,+79210000102,"ул. Ленина, д. 5\ud800",2,', "address holds a lone surrogate"),
        ('300\x013,+79210000103,"ул. Ленина, д. 5",3,', "account holds a control character"),
    ],
)
def test_a_subscriber_row_with_a_bad_character_is_left_out_with_a_sentence(
    row: str, sentence: str
) -> None:
    topo = topology.parse_text(textwrap.dedent(TOPOLOGY), Path("topology.yaml"))
    text = SUBSCRIBERS + row + "\n"
    subs, problems = directory.parse_csv(text, Path("subscribers.csv"), topo)
    assert len(subs) == SUBSCRIBERS.count("\n") - 1, "every other row is loaded"
    assert len(problems) == 1
    assert problems[0].startswith("subscribers.csv: row 10: ")
    assert sentence in problems[0]


def test_a_topology_name_with_a_nul_is_a_problem_not_a_crash() -> None:
    # (libyaml refuses a "\\ud800" escape itself; a NUL it lets through.)
    entry = '  - {id: sw-x, kind: access, parents: [agg-s], name: "bad \\0 name"}\n'
    with pytest.raises(TopologyError) as e:
        topology.parse_text(textwrap.dedent(TOPOLOGY) + entry, Path("topology.yaml"))
    assert any(
        p.startswith("topology.yaml: line 16: ") and "name holds a NUL byte (U+0000)" in p
        for p in e.value.problems
    ), e.value.problems


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        # The same bad text twice (the composer reads it once): each entry is told.
        (
            '  - {id: sw-x, kind: access, parents: [agg-s], name: "a\\tb"}\n'
            '  - {id: sw-y, kind: access, parents: [agg-s], name: "a\\tb"}\n',
            ["line 16: name holds a tab (U+0009)", "line 17: name holds a tab (U+0009)"],
        ),
        (
            '  - {id: sw-x, kind: access, parents: [agg-s], labels: {district: "n\\0"}}\n',
            ["line 16: district holds a NUL byte (U+0000)"],
        ),
        (
            '  - {id: sw-x, kind: access, parents: [agg-s], "na\\x01me": x}\n',
            ["line 16: na\x01me holds a control character (U+0001)"],
        ),
        # An anchor: read by PyYAML's own load, every entry searched.
        (
            '  - {id: sw-x, kind: access, parents: [agg-s], name: &n "a\\rb"}\n',
            ["line 16: name holds a carriage return (U+000D)"],
        ),
    ],
)
def test_a_bad_character_anywhere_in_a_topology_entry_is_found(
    entries: str, said: list[str]
) -> None:
    """The event composer looks at each text of the file once, and the entries are
    searched one by one only when some text holds a bad character: none is missed."""
    with pytest.raises(TopologyError) as e:
        topology.parse_text(textwrap.dedent(TOPOLOGY) + entries, Path("topology.yaml"))
    for sentence in said:
        assert any(sentence in p for p in e.value.problems), (sentence, e.value.problems)


def test_check_config_reports_a_nul_in_the_crm_export(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text(textwrap.dedent(TOPOLOGY))
    (tmp_path / "subscribers.csv").write_text(
        SUBSCRIBERS + '3001,+79210000101,"ул. Ленина, д. 5",1\x00,\n'
    )
    (tmp_path / "outagemon.toml").write_text(
        f'[daemon]\nstate_dir = "{tmp_path}"\n[topology]\nfile = "topology.yaml"\n'
        'subscribers = "subscribers.csv"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "outagemon", "check-config", "-c", str(tmp_path / "outagemon.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "row 10: flat holds a NUL byte (U+0000) at character 2" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_note_may_have_lines_and_tabs_but_not_other_controls() -> None:
    assert bad_character("line one\r\nline\ttwo", multiline=True) is None
    assert bad_character("a\x00b", multiline=True) == "a NUL byte (U+0000) at character 2"
    assert bad_character("x\ud800", multiline=True) == "a lone surrogate (U+D800) at character 2"
