"""The command line as a new user meets it: every bad input gets a sentence naming what was
wrong (never a traceback), and `outagemon reload` says what a reload did and did not do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outagemon import reloading
from tests.test_daemon import Proc
from tests.test_daemon_reliability import daemon, reload_cli  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outagemon", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)  # fmt: skip


def minimal_config(tmp: Path, extra: str = "") -> Path:
    (tmp / "topo.yaml").write_text("nodes:\n- {id: core-1, kind: core, ip: 127.0.0.1}\n")
    path = tmp / "om.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp}"\n[topology]\nfile = "topo.yaml"\n{extra}')
    return path


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not outagemon's and must survive what the test does."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_reload_sends_no_signal_to_a_process_that_is_not_an_outagemon_daemon(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    cfg = minimal_config(tmp_path)
    result = run_cli("reload", "-c", str(cfg), "--pid", str(bystander.pid), "--timeout", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"process {bystander.pid} (sleep 300) is not an outagemon daemon" in result.stderr
    assert "Traceback" not in result.stderr
    time.sleep(0.2)
    assert bystander.poll() is None, "the sleep was killed by the SIGHUP"


def test_reload_signals_nothing_when_it_refuses_the_config_itself(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    cfg = minimal_config(tmp_path, "[probe]\nintervall = 5\n")
    result = run_cli("reload", "-c", str(cfg), "--pid", str(bystander.pid))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not signalled" in result.stderr and "'intervall'" in result.stderr
    time.sleep(0.2)
    assert bystander.poll() is None, "a refused config must not be signalled to anyone"


def test_reload_refuses_an_outagemon_run_that_is_not_the_daemon_of_its_state_dir(
    tmp_path: Path,
) -> None:
    # Looks like `outagemon run` (a worker supervisor forked by the daemon does), but the
    # daemon's pid file names another process.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              "outagemon", "run"])  # fmt: skip
    try:
        cfg = minimal_config(tmp_path)
        (tmp_path / reloading.PID_FILE).write_text(f"{os.getpid()}\n")
        result = run_cli("reload", "-c", str(cfg), "--pid", str(other.pid), "--timeout", "2")
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"is not the daemon of {tmp_path}, which is process {os.getpid()}" in result.stderr
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_reload_without_pid_says_no_daemon_runs_when_there_is_no_pid_file(
    tmp_path: Path,
) -> None:
    cfg = minimal_config(tmp_path)
    result = run_cli("reload", "-c", str(cfg), "--timeout", "2")
    assert result.returncode == reloading.NOT_A_DAEMON, result.stdout + result.stderr
    assert result.stderr == (
        f"outagemon reload: no outagemon daemon runs for {tmp_path} ({tmp_path}/daemon.pid, "
        "which the daemon writes while it runs, is not there); nothing was signalled.\n"
    )


def test_reload_without_pid_signals_nothing_through_a_stale_pid_file(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """A daemon killed with -9 leaves its pid file; the pid may be another process's by
    now (or nobody's): the command line check still guards it."""
    cfg = minimal_config(tmp_path)
    (tmp_path / reloading.PID_FILE).write_text(f"{bystander.pid}\n")
    result = run_cli("reload", "-c", str(cfg), "--timeout", "2")
    assert result.returncode == reloading.NOT_A_DAEMON, result.stdout + result.stderr
    assert (f"no outagemon daemon runs for {tmp_path}: its daemon.pid is stale; process "
            f"{bystander.pid} (sleep 300) is not an outagemon daemon") in result.stderr  # fmt: skip
    time.sleep(0.2)
    assert bystander.poll() is None, "the sleep was killed by the SIGHUP"
    ended = subprocess.Popen(["true"])
    ended.wait()
    (tmp_path / reloading.PID_FILE).write_text(f"{ended.pid}\n")
    result = run_cli("reload", "-c", str(cfg), "--timeout", "2")
    assert result.returncode == reloading.NOT_A_DAEMON, result.stdout + result.stderr
    assert (f"its daemon.pid names process {ended.pid}, which has ended"
            in result.stderr)  # fmt: skip
    assert "Traceback" not in result.stderr


def test_reload_without_pid_finds_the_daemon_by_its_pid_file(daemon: Proc) -> None:  # noqa: F811
    topology = daemon.state / "topology.yaml"
    text = topology.read_text()
    topology.write_text(text + "- {id: core-1, kind: core}\n")  # refused by the daemon
    result = run_cli("reload", "-c", str(daemon.config), "--timeout", "30")
    assert result.returncode == reloading.REFUSED, result.stdout + result.stderr
    assert "duplicate id 'core-1'" in result.stderr, "the daemon itself said so"
    topology.write_text(text)
    result = run_cli("reload", "-c", str(daemon.config), "--timeout", "30")
    assert result.returncode == reloading.APPLIED, result.stdout + result.stderr
    assert result.stdout.strip() == "reloaded." and daemon.process.poll() is None


def test_a_reload_names_the_sections_that_wait_for_a_restart(daemon: Proc) -> None:  # noqa: F811
    assert (daemon.state / reloading.PID_FILE).read_text().strip() == str(daemon.process.pid)
    good = daemon.config.read_text()
    daemon.config.write_text(good + "[notify]\ncritical_subscribers = 400\n")
    result = reload_cli(daemon)
    assert result.returncode == reloading.RESTART_NEEDED, result.stdout + result.stderr
    assert ("reloaded; these sections need a restart to take effect: [notify]"
            in result.stderr)  # fmt: skip
    # Measured against what the daemon started with: a second reload still says so.
    result = reload_cli(daemon)
    assert result.returncode == reloading.RESTART_NEEDED, result.stdout + result.stderr
    # Back to what it started with: nothing waits for a restart.
    daemon.config.write_text(good)
    result = reload_cli(daemon)
    assert result.returncode == 0 and result.stdout.strip() == "reloaded.", result.stderr


def test_check_config_refuses_a_missing_certificate_as_run_does(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("a key\n")
    cfg = minimal_config(tmp_path, '[http]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    said = f"[http] tls_cert {tmp_path}/cert.pem: no such file."
    for command in ("check-config", "run"):
        result = run_cli(command, "-c", str(cfg))
        assert result.returncode == 2, result.stdout + result.stderr
        assert said in result.stderr, result.stderr
        assert "valid" not in result.stdout


@pytest.mark.parametrize(
    ("database", "said"),
    [
        ('dsn = "mysql://x"', "[database] dsn must be a postgresql:// (or postgres://) URL"),
        ('dsn_file = "dsn"', "[database] dsn_file {tmp}/dsn: the text it holds must be a "
         "postgresql:// (or postgres://) URL"),
        ('dsn = "postgresql://om@db:fivefour/om"', "[database] dsn has a port that is not a"),
    ],
)  # fmt: skip
def test_check_config_refuses_a_dsn_that_the_database_driver_refuses(
    tmp_path: Path, database: str, said: str
) -> None:
    (tmp_path / "dsn").write_text("host=db.example.net user=om password=hunter2\n")
    cfg = minimal_config(tmp_path, f"[database]\n{database}\n")
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 2, result.stdout + result.stderr
    assert said.format(tmp=tmp_path) in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and "fivefour" not in result.stderr
    if "dsn_file" in database:
        assert "a libpq key=value string" in result.stderr


def test_every_dsn_the_driver_accepts_is_accepted() -> None:
    from outagemon import config

    accepted = [
        "postgresql://om@db/om",
        "postgres://om:pw@db1:5432,db2:5433/om",
        "postgresql://om@[::1]:5432/om",
        "postgresql:///om?host=/run/postgresql",
    ]
    for dsn in accepted:
        cfg = config.parse(f'[database]\ndsn = "{dsn}"\n', Path("/etc/om.toml"))
        assert cfg.database.dsn == dsn


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_demo_port_out_of_range_is_a_sentence(port: str) -> None:
    result = run_cli("demo", "--port", port)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == (
        f"outagemon: argument --port: must be a port number from 1 to 65535 (or 0 for any "
        f"free port), not {port!r}. See 'outagemon demo --help'.\n"
    )


def test_demo_port_0_takes_a_free_port_and_the_banner_names_it(tmp_path: Path) -> None:
    import re
    import urllib.request

    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "outagemon", "demo", "--port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.5)
            ports = set(re.findall(r"http://127\.0\.0\.1:(\d+)/", log.read_text()))
            if not ports:
                continue
            assert len(ports) == 1 and ports != {"0"}, ports
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports.pop()}/healthz",
                                            timeout=2) as r:  # fmt: skip
                    status = r.status
            except OSError:
                continue
        assert status == 200, log.read_text()[-2000:]
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=15)


@pytest.mark.parametrize(
    ("args", "help_command"),
    [
        ([], "outagemon --help"),
        (["report", "downtime", "--from", "x"], "outagemon report downtime --help"),
        (["report"], "outagemon report --help"),
        (["probe", "--count", "x"], "outagemon probe --help"),
    ],
)
def test_a_usage_error_points_to_help_that_exists(args: list[str], help_command: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("outagemon: ") and result.stderr.endswith(
        f" See '{help_command}'.\n"
    ), result.stderr
    shown = run_cli(*help_command.split()[1:])
    assert shown.returncode == 0 and shown.stdout.startswith("usage: "), shown.stderr


def test_check_config_lists_the_config_topology_and_subscriber_problems_in_one_pass(
    tmp_path: Path,
) -> None:
    (tmp_path / "topo.yaml").write_text(
        "nodes:\n- {id: core-1, kind: core, ip: 127.0.0.1}\n- {id: core-1, kind: core}\n"
    )
    cfg = tmp_path / "om.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[probe]\nintervall = 5\n'
                   '[topology]\nfile = "topo.yaml"\n')  # fmt: skip
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{cfg}: unknown key [probe] 'intervall' (did you mean 'interval'?).",
        f"{tmp_path}/topo.yaml: line 3: duplicate id 'core-1' (first at line 2).",
    ]
    # With a good topology, the subscribers' rows are listed beside the config's problem.
    (tmp_path / "topo.yaml").write_text("nodes:\n- {id: core-1, kind: core, ip: 127.0.0.1}\n")
    (tmp_path / "subs.csv").write_text("account,phone,address,flat\n1,,,1\n")
    cfg.write_text(cfg.read_text() + 'subscribers = "subs.csv"\n')
    result = run_cli("check-config", "-c", str(cfg))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert "'intervall'" in lines[0] and lines[1].startswith(f"{tmp_path}/subs.csv"), lines


def test_a_missing_topology_file_is_named_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "om.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[topology]\nfile = "topo.yaml"\n')
    for command in ("check-config", "run"):
        result = run_cli(command, "-c", str(cfg))
        assert result.returncode == 2
        assert result.stderr == f"[topology] file {tmp_path}/topo.yaml: no such file.\n"


def test_a_closed_pipe_ends_the_output_quietly_as_unix_tools_do(tmp_path: Path) -> None:
    cfg = minimal_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "outagemon", "check-config", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert stderr == "", stderr


def test_page_auth_with_only_a_refused_token_names_the_token_not_its_absence(
    tmp_path: Path,
) -> None:
    token = 'token = "0123456789abcdef0123456789abcdef01"\n'
    extra = f'[http]\npage_auth = true\n[[auth.tokens]]\nname = "noc"\n{token}role = "reader"\n'
    cfg = minimal_config(tmp_path, extra)
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 2
    assert result.stderr == (f"{cfg}: [[auth.tokens]] number 1: role must be one of 'read', "
                             "'write', not 'reader'.\n")  # fmt: skip
    # With no entry at all, page_auth says what it needs.
    cfg = minimal_config(tmp_path, "[http]\npage_auth = true\n")
    result = run_cli("check-config", "-c", str(cfg))
    assert "page_auth needs at least one [[auth.tokens]]" in result.stderr


@pytest.mark.parametrize("timeout", ["0.001", "0.5"])
def test_a_probe_timeout_shorter_than_the_engine_keeps_is_refused_with_the_minimum(
    timeout: str,
) -> None:
    result = run_cli("probe", "-t", timeout, "127.0.0.1")
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert result.stderr.startswith(
        f"outagemon probe: -t {float(timeout):g} is shorter than the engine can enforce: "
        "give at least 1 (ms)."
    ), result.stderr


@pytest.mark.parametrize("timeout", ["nan", "inf", "0"])
def test_a_probe_timeout_that_is_not_a_time_is_a_usage_error(timeout: str) -> None:
    result = run_cli("probe", "-t", timeout, "127.0.0.1")
    assert result.returncode == 2 and result.stdout == ""
    assert "-t above 0" in result.stderr and "Traceback" not in result.stderr


def test_the_billing_csv_into_a_closed_pipe_ends_quietly(fresh_db: str, tmp_path: Path) -> None:
    cfg = tmp_path / "om.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[database]\ndsn = "{fresh_db}"\n')
    assert run_cli("migrate", "-c", str(cfg)).returncode == 0
    args = ["report", "downtime", "-c", str(cfg), "--from", "2026-01-01", "--to", "2026-01-02"]
    proc = subprocess.Popen([sys.executable, "-m", "outagemon", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("it hung: asyncpg's COPY waited on a callback that raised") from None
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 128 + signal.SIGPIPE, stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr
    # A full disk under standard output: a sentence (it hung, as the closed pipe did).
    with open("/dev/full", "wb") as full:
        command = [sys.executable, "-m", "outagemon", *args]
        done = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        "outagemon report downtime: cannot write the report: No space left on device.\n"
    )
