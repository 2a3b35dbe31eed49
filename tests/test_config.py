"""The config file: every documented key is read; every kind of mistake is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outagemon import config
from outagemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

FULL = """
[daemon]
state_dir = "/srv/om"
[database]
dsn = "postgresql://om@db/om"
write_queue = 500
queue_bytes = 2097152
timeout = 7.5
read_timeout = 0.5
[http]
listen = "[::1]:9090"
max_streams = 7
[probe]
interval = 5
timeout = 0.5
down_after = 4
up_after = 3
max_rate = 1000
[correlation]
window = 20.0
infer_min_children = 5
infer_ratio = 0.9
resolve_hold = 0
[topology]
file = "net/topo.yaml"
subscribers = "net/subs.csv"
[vantage]
anchors = ["127.0.0.1", "::1"]
[messages]
language = "en"
restored_for = 600
[[auth.tokens]]
name = "ivr"
token = "secret-read-0123456789abcdef0123456789"
role = "read"
[[auth.tokens]]
name = "noc"
token = "secret-write-0123456789abcdef0123456789"
role = "write"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("/etc/om.toml"))
    return info.value.problems


def test_every_documented_key_is_read() -> None:
    cfg = config.parse(FULL, Path("/etc/om/om.toml"))
    assert cfg.daemon.state_dir == Path("/srv/om")
    assert cfg.database.dsn == "postgresql://om@db/om"
    assert cfg.database.write_queue == 500
    assert (cfg.database.queue_bytes, cfg.database.timeout, cfg.database.read_timeout) == (
        2097152, 7.5, 0.5)  # fmt: skip
    assert (cfg.http.host, cfg.http.port, cfg.http.max_streams) == ("::1", 9090, 7)
    assert cfg.probe == config.ProbeConfig(5, 0.5, 4, 3, 1000)
    assert cfg.correlation == config.CorrelationConfig(20.0, 5, 0.9, 0)
    assert cfg.topology.file == Path("/etc/om/net/topo.yaml")
    assert cfg.topology.subscribers == Path("/etc/om/net/subs.csv")
    assert cfg.vantage.anchors == ("127.0.0.1", "::1")
    assert cfg.messages == config.MessagesConfig("en", 600)
    assert [(t.name, t.role) for t in cfg.tokens] == [("ivr", "read"), ("noc", "write")]


def test_an_empty_file_gives_the_documented_defaults() -> None:
    cfg = config.parse("", Path("/etc/om/om.toml"))
    assert cfg.probe.interval == 10.0 and cfg.probe.down_after == 3
    assert cfg.http.listen == "127.0.0.1:8080" and cfg.http.max_streams == 100
    assert cfg.topology.file == Path("/etc/om/topology.yaml")
    assert cfg.topology.subscribers is None
    assert cfg.messages.language == "ru"
    assert cfg.tokens == ()


def test_tokens_never_appear_in_repr() -> None:
    cfg = config.parse(FULL, Path("/etc/om.toml"))
    assert "secret-read" not in repr(cfg)


def test_unknown_key_is_named_with_a_suggestion() -> None:
    assert problems_of("[probe]\nintervl = 3\n") == [
        "/etc/om.toml: unknown key [probe] 'intervl' (did you mean 'interval'?)."
    ]


def test_unknown_section_is_named() -> None:
    assert problems_of("[prob]\n") == [
        "/etc/om.toml: unknown section [prob] (did you mean 'probe'?)."
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[probe]\ninterval = "10"\n', "[probe] interval must be a number of seconds, not '10'."),
        ("[probe]\ninterval = -5\n", "[probe] interval must be a positive number of seconds"),
        ("[probe]\ntimeout = 0\n", "[probe] timeout must be from 0.001 (1 ms: the probe engine"),
        ("[probe]\ndown_after = 0\n", "[probe] down_after must be at least 1, not 0."),
        ("[probe]\nmax_rate = 1.5\n", "[probe] max_rate must be a whole number, not 1.5."),
        ("[probe]\ndown_after = true\n", "[probe] down_after must be a whole number"),
        ("[correlation]\ninfer_ratio = 1.5\n", "[correlation] infer_ratio must be more than 0"),
        ("[correlation]\nresolve_hold = -1\n", "[correlation] resolve_hold must not be negative"),
        ('[http]\nlisten = "localhost"\n', "[http] listen is not a listen address"),
        ('[http]\nlisten = "127.0.0.1:99999"\n', "the port '99999' is not a number"),
        ('[http]\nlisten = "::1:8080"\n', "an IPv6 address is written [address]:port"),
        ('[http]\nlisten = "[::zz]:8080"\n', "[http] listen is not a listen address"),
        ("[http]\nmax_streams = 0\n", "[http] max_streams must be at least 1, not 0."),
        ('[http]\nmax_streams = "10"\n', "[http] max_streams must be a whole number, not '10'."),
        (
            '[vantage]\nanchors = ["127.0.0.1", "gw"]\n',
            "IP addresses (a node's ip, not its id): 'gw' is not one.",
        ),
        ('[messages]\nlanguage = "de"\n', "[messages] language must be one of 'ru', 'en'"),
        ('[daemon]\nstate_dir = ""\n', "[daemon] state_dir must not be empty"),
        ("[probe]\ninterval = 1\ntimeout = 2\n", "timeout (2 s) must not be longer than"),
        ("probe = 3\n", "[probe] must be a table of keys"),
        ("[probe\n", "not valid TOML"),
    ],
)
def test_each_kind_of_bad_value_gets_its_sentence(text: str, expected: str) -> None:
    found = problems_of(text)
    assert len(found) == 1, found
    assert expected in found[0]
    assert found[0].startswith("/etc/om.toml: ")


def test_token_problems() -> None:
    found = problems_of(
        '[[auth.tokens]]\nname = "a"\nrole = "admin"\n'
        '[[auth.tokens]]\nname = "b"\ntoken = "t"\nrole = "read"\n'
        '[[auth.tokens]]\nname = "b"\ntoken = "t"\nrole = "write"\n'
    )
    assert any("number 1: role must be one of 'read', 'write', not 'admin'" in p for p in found)
    assert any("number 1: token is required." in p for p in found)
    assert any("number 3: the name 'b' is used twice." in p for p in found)
    assert any("number 3: its token is the same as an earlier one's." in p for p in found)
    assert not any("'t'" in p for p in found), "a secret must never be repeated in an error"


def test_all_problems_are_reported_at_once() -> None:
    found = problems_of('[probe]\ninterval = -1\nbogus = 1\n[http]\nlisten = "x"\n[nope]\n')
    assert len(found) == 4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outagemon", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_accepts_the_shipped_example() -> None:
    result = run_cli("check-config", "-c", str(ROOT / "config" / "outagemon.toml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("outagemon.toml: valid")
    assert "subscribers" in result.stdout and "0 rows with problems" in result.stdout


def test_check_config_exits_2_with_every_problem_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[probe]\ninterval = -1\n[http]\nlisten = "nowhere"\n')
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{bad}: ") for line in lines[:2])
    # The topology it names (by default) is missing too: said in the same pass.
    assert lines[2] == f"[topology] file {tmp_path}/topology.yaml: no such file."
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_sentence(tmp_path: Path) -> None:
    result = run_cli("run", "-c", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'none.toml'}: no such file."


def test_lookup_without_a_question_exits_2_and_without_a_daemon_exits_1() -> None:
    result = run_cli("lookup")
    assert result.returncode == 2
    assert "give --phone, --account, --address or --node" in result.stderr
    result = run_cli("lookup", "--phone", "89211234567", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith("outagemon lookup: cannot reach http://127.0.0.1:9")


def test_usage_errors_exit_2_with_a_sentence() -> None:
    result = run_cli("run")
    assert result.returncode == 2
    assert "the following arguments are required: -c/--config" in result.stderr


def test_a_relative_state_dir_that_lands_under_etc_is_warned_of() -> None:
    # The example's "../state", copied to /etc/outagemon unedited, put the journal and
    # the embedded database in /etc/state without a word (a new user's trial).
    text = '[daemon]\nstate_dir = "../state"\n'
    copied = config.parse(text, Path("/etc/outagemon/outagemon.toml"))
    assert copied.daemon.state_dir == Path("/etc/state")
    (said,) = [w for w in copied.warnings if "state_dir" in w]
    assert "/etc/state, under /etc" in said and "/var/lib/outagemon" in said
    in_place = config.parse(text, Path("/opt/outagemon/config/outagemon.toml"))
    assert not [w for w in in_place.warnings if "state_dir" in w]
    chosen = config.parse('[daemon]\nstate_dir = "/etc/om-state"\n', Path("/etc/om.toml"))
    assert not [w for w in chosen.warnings if "state_dir" in w]  # written so: meant
