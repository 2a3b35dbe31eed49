"""Secrets: read from systemd credentials, long enough, never printed, never in argv."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from outagemon import config
from outagemon.errors import ConfigError
from outagemon.sim import citygen
from tests.conftest import free_port, short_tmp_dir
from tests.test_daemon import Proc, daemon  # noqa: F401 - the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent
GOOD_TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef"  # 48 characters
NUMBER = "918273645546372819"  # a secret written without quotes: a TOML integer

TOKEN_FROM_FILE = """
[database]
dsn_file = "dsn"
[[auth.tokens]]
name = "ivr"
token_file = "ivr-token"
role = "read"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("/etc/om/om.toml"))
    return info.value.problems


def test_secrets_come_from_the_credentials_directory_when_systemd_gives_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ivr-token").write_text(GOOD_TOKEN + "\n")
    (credentials / "dsn").write_text("postgresql://om:pw@db/om\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    cfg = config.parse(TOKEN_FROM_FILE, tmp_path / "elsewhere" / "om.toml")
    assert [(t.name, t.token, t.role) for t in cfg.tokens] == [("ivr", GOOD_TOKEN, "read")]
    assert cfg.database.dsn == "postgresql://om:pw@db/om"
    assert "pw@" not in repr(cfg) and GOOD_TOKEN not in repr(cfg)


def test_without_systemd_secret_files_are_found_next_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "ivr-token").write_text(GOOD_TOKEN)
    (tmp_path / "dsn").write_text("postgresql://om@db/om")
    cfg = config.parse(TOKEN_FROM_FILE, tmp_path / "om.toml")
    assert cfg.tokens[0].token == GOOD_TOKEN
    (tmp_path / "ivr-token").unlink()
    found = problems_of(TOKEN_FROM_FILE.replace('"dsn"', f'"{tmp_path}/dsn"'))
    assert found == [
        "/etc/om/om.toml: [[auth.tokens]] number 1: token_file: the file "
        "/etc/om/ivr-token does not exist (for a file the unit hands over with "
        "LoadCredential=, set CREDENTIALS_DIRECTORY to its directory, e.g. "
        "/etc/outagemon/credentials)."
    ]


def test_token_and_token_file_together_are_refused() -> None:
    found = problems_of(
        f'[[auth.tokens]]\nname = "a"\ntoken = "{GOOD_TOKEN}"\ntoken_file = "x"\nrole = "read"\n'
    )
    assert found == [
        "/etc/om/om.toml: [[auth.tokens]] number 1: give token or token_file, not both."
    ]


def test_a_token_shorter_than_16_characters_is_refused_and_one_under_32_warned() -> None:
    found = problems_of('[[auth.tokens]]\nname = "ivr"\ntoken = "fifteen-chars-x"\nrole = "read"\n')
    assert len(found) == 1 and "shorter than 16 characters" in found[0]
    assert "fifteen-chars-x" not in found[0]
    cfg = config.parse(
        '[[auth.tokens]]\nname = "ivr"\ntoken = "sixteen-chars-xx"\nrole = "read"\n',
        Path("/etc/om/om.toml"),
    )
    assert len(cfg.tokens) == 1
    assert len(cfg.warnings) == 1 and "shorter than 32 characters" in cfg.warnings[0]
    assert "sixteen-chars-xx" not in cfg.warnings[0]
    cfg = config.parse(
        f'[[auth.tokens]]\nname = "ivr"\ntoken = "{GOOD_TOKEN}"\nrole = "read"\n',
        Path("/etc/om/om.toml"),
    )
    assert cfg.warnings == ()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outagemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_config_never_prints_the_value_of_a_secret(tmp_path: Path) -> None:
    example = (ROOT / "config" / "outagemon.toml").read_text()
    example = example.replace("../state", str(tmp_path / "state"))
    for name in ("topology.yaml", "subscribers.csv"):
        (tmp_path / name).write_text((ROOT / "config" / name).read_text())
    bad = tmp_path / "om.toml"
    bad.write_text(
        example.replace('dsn = ""', f"dsn = {NUMBER}1")
        + f'\n[[auth.tokens]]\nname = "ivr"\ntoken = {NUMBER}\nrole = "read"\n'
    )
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "[database] dsn must be a string, not a number" in result.stderr
    assert "token must be a string, not a number" in result.stderr
    assert NUMBER not in result.stdout + result.stderr

    short = tmp_path / "short.toml"
    short.write_text(example + '\n[[auth.tokens]]\nname = "ivr"\ntoken = "0123456789abcdefXYZ"\n'
                     'role = "read"\n')  # fmt: skip
    result = run_cli("check-config", "-c", str(short))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "shorter than 32 characters" in result.stderr
    assert "0123456789abcdefXYZ" not in result.stdout + result.stderr


def test_a_refused_reload_never_logs_the_value_of_a_secret(daemon: Proc) -> None:  # noqa: F811
    daemon.config.write_text(
        daemon.config.read_text()
        + f'[[auth.tokens]]\nname = "ivr"\ntoken = {NUMBER}\nrole = "read"\n'
    )
    daemon.process.send_signal(signal.SIGHUP)
    record = daemon.wait_for_log("config.reload_refused")
    assert any("token must be a string, not a number" in p for p in record["problems"])  # type: ignore[attr-defined]
    assert NUMBER not in daemon.log.read_text()


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Recorder.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"status": "ok", "message": "fine"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_lookup_takes_its_token_from_a_file_or_the_environment(
    recorder: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(GOOD_TOKEN + "\n")
    ask = ("lookup", "--phone", "89211234567", "--url", recorder)
    result = run_cli(*ask, "--token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    result = run_cli(*ask, env={"OUTAGEMON_TOKEN": GOOD_TOKEN + "-env"})
    assert result.returncode == 0, result.stderr
    assert Recorder.seen == [f"Bearer {GOOD_TOKEN}", f"Bearer {GOOD_TOKEN}-env"]
    # The old flag still works, and says why it should not be used.
    result = run_cli(*ask, "--token", GOOD_TOKEN)
    assert result.returncode == 0
    assert "--token shows the token to every local user" in result.stderr
    assert Recorder.seen[-1] == f"Bearer {GOOD_TOKEN}"
    result = run_cli(*ask, "--token-file", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.startswith("outagemon lookup: cannot read")


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_with_tls_cert_and_key_the_daemon_speaks_only_https() -> None:
    home = short_tmp_dir()
    citygen.generate(aggregations=1, access_per_aggregation=2).write(home)
    cert, _key = self_signed(home)
    port = free_port()
    config = home / "outagemon.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{home}/state"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
        '[topology]\nfile = "topology.yaml"\nsubscribers = "subscribers.csv"\n'
    )
    log = home / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "outagemon", "run", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert daemon.poll() is None, log.read_text()
            time.sleep(0.2)
            try:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=2, context=trusting) as r:
                    status = r.status
            except (urllib.error.URLError, ConnectionError):
                continue
        assert status == 200, log.read_text()
        # Plain HTTP on the same port gets no answer.
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        # A client that does not trust the certificate refuses it.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz",
                timeout=2,
                context=ssl.create_default_context(cafile=None, capath="/nonexistent"),
            )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)


def test_an_unusable_certificate_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "outagemon.toml"
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    citygen.generate(aggregations=1, access_per_aggregation=2).write(tmp_path)
    config.write_text(
        f'[daemon]\nstate_dir = "{short_tmp_dir()}"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\ntls_cert = "cert.pem"\n'
        'tls_key = "key.pem"\n[topology]\nfile = "topology.yaml"\n'
    )
    said = f"[http] tls_cert {tmp_path}/cert.pem with tls_key {tmp_path}/key.pem cannot be used"
    # run and check-config agree: both refuse it, with the same sentence.
    for command in ("run", "check-config"):
        result = run_cli(command, "-c", str(config))
        assert result.returncode == 2, result.stdout + result.stderr
        assert said in result.stderr and "Traceback" not in result.stderr


def test_page_auth_needs_a_token_and_the_metrics_token_is_a_secret() -> None:
    assert any(
        "page_auth needs at least one [[auth.tokens]]" in p
        for p in problems_of("[http]\npage_auth = true\n")
    )
    found = problems_of(f"[http]\nmetrics_token = {NUMBER}\n")
    assert found == [
        "/etc/om/om.toml: [http] metrics_token must be a string, not a number "
        "(its value is not shown)."
    ]
    cfg = config.parse(
        f'[http]\npage_auth = true\nmetrics_token = "{GOOD_TOKEN}"\n'
        f'allowed_hosts = ["NOC.example.net", "[::1]"]\n'
        f'[[auth.tokens]]\nname = "ivr"\ntoken = "{GOOD_TOKEN}x"\nrole = "read"\n',
        Path("/etc/om/om.toml"),
    )
    assert cfg.http.page_auth and cfg.http.metrics_token == GOOD_TOKEN
    assert cfg.http.allowed_hosts == ("noc.example.net", "::1")
    assert GOOD_TOKEN not in repr(cfg)


def test_serving_other_hosts_without_a_login_or_tls_is_warned_about() -> None:
    cfg = config.parse('[http]\nlisten = "0.0.0.0:8080"\n', Path("/etc/om/om.toml"))
    said = " ".join(cfg.warnings)
    assert "page_auth" in said and "tls_cert" in said and "allowed_hosts" in said
    cfg = config.parse('[http]\nlisten = "127.0.0.1:8080"\n', Path("/etc/om/om.toml"))
    assert cfg.warnings == ()
