"""Defects found by the thirteenth new user's trial (a NOC engineer following the README,
the demo and the service install), each pinned through the real command or HTTP app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.world import READ, world


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outagemon", *args], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip


async def test_lookup_refused_for_want_of_a_token_says_how_the_command_takes_one(
    fresh_db: str, tmp_path: Path
) -> None:
    """`outagemon lookup --phone …` against a daemon with tokens printed the daemon's
    sentence for HTTP clients, "a token is required: send Authorization: Bearer TOKEN.",
    which a NOC engineer at the command line cannot act on."""
    wrong = tmp_path / "token"
    wrong.write_text("not-the-token-0123456789\n")
    async with world(fresh_db) as w:
        base = w.url("/").rstrip("/")
        ask = ("lookup", "--phone", "89210000001", "--url", base)
        bare = {"PATH": "/usr/bin:/bin"}  # no OUTAGEMON_TOKEN from the test's environment
        none = await asyncio.to_thread(run_cli, *ask, env=bare)
        bad = await asyncio.to_thread(run_cli, *ask, "--token-file", str(wrong), env=bare)
        good = await asyncio.to_thread(run_cli, *ask, env={**bare, "OUTAGEMON_TOKEN": READ})
    assert none.returncode == 1
    assert none.stderr == (
        "outagemon lookup: the daemon answered 401: a token is required: give it with "
        "--token-file FILE or OUTAGEMON_TOKEN.\n"
    )
    assert bad.returncode == 1
    assert bad.stderr == (
        f"outagemon lookup: the daemon answered 401: the token is not valid (the token sent "
        f"was from {wrong}).\n"
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("status: ok\n"), good.stdout


def test_lookup_with_a_url_without_its_scheme_says_what_url_it_wants() -> None:
    """`--url 127.0.0.1:8080` (the [http] listen as written in the config) was answered
    "cannot reach 127.0.0.1:8080: unknown url type: 127.0.0.1." (urllib's words), exit 1."""
    for url in ("127.0.0.1:8080", "localhost", "ftp://127.0.0.1:8080"):
        result = run_cli("lookup", "--phone", "89210000001", "--url", url)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            "outagemon lookup: --url must be the daemon's base URL, such as "
            f"http://127.0.0.1:8080, not {url!r}.\n"
        )


def test_lookup_help_says_what_each_question_and_the_url_are() -> None:
    """`outagemon lookup --help` listed --phone PHONE, --url URL… with no word on any, nor
    the default address it asks."""
    result = run_cli("lookup", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--phone PHONE the caller's number" in text
    assert "--flat FLAT the flat, with --address" in text
    assert "(default http://127.0.0.1:8080)" in text


def test_a_list_with_a_bad_item_is_named_once_without_a_second_not() -> None:
    """check-config said "[vantage] anchors must list IP addresses, and 'core-1' is not one,
    not ['core-1', '300.1.1.1']." (two "not"s, the second bad item unnamed), where a new
    user had written node ids, as the default anchors are the topology's roots."""
    from outagemon import config
    from outagemon.errors import ConfigError

    def problems(text: str) -> list[str]:
        try:
            config.parse(text, Path("/etc/om.toml"))
        except ConfigError as e:
            return e.problems
        raise AssertionError("accepted")

    assert problems('[vantage]\nanchors = ["core-1", "300.1.1.1"]\n') == [
        "/etc/om.toml: [vantage] anchors must list IP addresses (a node's ip, not its id): "
        "'core-1' and '300.1.1.1' are not."
    ]
    assert problems('[vantage]\nanchors = ["127.0.0.1", "gw"]\n') == [
        "/etc/om.toml: [vantage] anchors must list IP addresses (a node's ip, not its id): "
        "'gw' is not one."
    ]
    assert problems('[http]\nallowed_hosts = ["noc.example.net", "a b"]\n') == [
        "/etc/om.toml: [http] allowed_hosts must list host names or addresses: 'a b' is not one."
    ]
    # A value that is no list at all is still shown after the reason.
    assert problems('[vantage]\nanchors = "127.0.0.1"\n') == [
        "/etc/om.toml: [vantage] anchors must be a list of IP addresses, not '127.0.0.1'."
    ]


def test_a_short_token_is_named_with_the_tokens_other_problems() -> None:
    """A token entry with a wrong role and a 5-character token was told only of its role;
    the short token came up at the next check-config."""
    from outagemon import config
    from outagemon.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        config.parse('[[auth.tokens]]\nname = "ivr"\ntoken = "short"\nrole = "admin"\n'
                     '[[auth.tokens]]\ntoken = "short2"\nrole = "read"\n',
                     Path("/etc/om.toml"))  # fmt: skip
    assert info.value.problems == [
        "/etc/om.toml: [[auth.tokens]] number 1: role must be one of 'read', 'write', not 'admin'.",
        "/etc/om.toml: [[auth.tokens]] number 1: the token of 'ivr' is shorter than 16 "
        "characters; make one with: openssl rand -hex 24",
        "/etc/om.toml: [[auth.tokens]] number 2: name is required.",
        "/etc/om.toml: [[auth.tokens]] number 2: its token is shorter than 16 characters; make "
        "one with: openssl rand -hex 24",
    ]


def test_the_example_config_names_every_key() -> None:
    """The README says `config/outagemon.toml` comments each key; `[http] workers_nice`
    and `[callers] burst_evidence` were in the README's tables but not in the file a new
    user copies to /etc/outagemon."""
    import re

    from outagemon import config

    text = (Path(__file__).parent.parent / "config" / "outagemon.toml").read_text()
    parts = re.split(r"^#?\s*\[+([a-z_.]+)\]+\s*$", text, flags=re.M)
    named: dict[str, set[str]] = {}
    for section, body in zip(parts[1::2], parts[2::2], strict=True):
        named.setdefault(section, set()).update(re.findall(r"\b([a-z_]+) = ", body))
    schemas = {
        **config.SCHEMA,
        "notify": config.NOTIFY_SCHEMA,
        "notify.webhooks": config.WEBHOOK_SCHEMA,
        "auth.tokens": config.TOKEN_SCHEMA,
    }
    missing = {f"[{section}] {key}" for section, keys in schemas.items() for key in keys
               if key not in named.get(section, set())}  # fmt: skip
    assert missing == set()
    # What the file sets is valid as it stands.
    config.parse(text, Path("/etc/outagemon/outagemon.toml"))


def test_the_command_says_its_version() -> None:
    """`outagemon --version` (what a NOC engineer types first on a host, and what a bug
    report asks for) was "the following arguments are required: COMMAND", exit 2; the
    version was only in /healthz of a running daemon."""
    from outagemon import __version__

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"outagemon {__version__}\n"


def test_check_config_says_how_many_http_workers_answer(tmp_path: Path) -> None:
    """`[http] workers = 2` checked by check-config: its summary said nothing of them, so
    the new user could not see the key had been read."""
    root = Path(__file__).parent.parent / "config"
    for name in ("topology.yaml", "subscribers.csv"):
        (tmp_path / name).write_text((root / name).read_text())
    cfg = tmp_path / "outagemon.toml"
    base = (
        '[daemon]\nstate_dir = "/var/lib/outagemon"\n'
        '[database]\ndsn = "postgresql://outagemon@127.0.0.1/outagemon"\n'
        '[topology]\nfile = "topology.yaml"\nsubscribers = "subscribers.csv"\n[http]\n'
    )
    cfg.write_text(base + "workers = 2\n")
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "  http: 127.0.0.1:8080 (plain HTTP, page open); tokens: 0; 2 workers\n" in result.stdout
    cfg.write_text(base)
    result = run_cli("check-config", "-c", str(cfg))
    assert "  http: 127.0.0.1:8080 (plain HTTP, page open); tokens: 0\n" in result.stdout
