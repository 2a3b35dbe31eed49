"""The `outagemon` command: argument parsing only; each subcommand imports what it needs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# pathlib (with urllib.parse and ipaddress) is imported when a command takes a path: the
# probe command's start-up counts against fping's. (mypy takes any TYPE_CHECKING as true.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

USAGE_ERROR = 2
LOOKUP_URL = "http://127.0.0.1:8080"  # the example config's [http] listen


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One sentence and exit 2, as the contract asks; argparse's own usage dump is noise.
        # self.prog is the whole command: "outagemon", "outagemon report downtime".
        self.exit(USAGE_ERROR, f"outagemon: {message}. See '{self.prog} --help'.\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != "outagemon":
            # A command's own unknown arguments: its help is the one to read, not the
            # top level's, which would say them otherwise.
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _path(text: str) -> Path:
    """A FILE argument."""
    from pathlib import Path

    return Path(text)


def _port(text: str) -> int:
    """A TCP port for --port: 1-65535, or 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 1 to 65535 (or 0 for any free port), not {text!r}"
        )
    return port


def _parser() -> argparse.ArgumentParser:
    from outagemon import __version__

    p = _Parser(prog="outagemon", description="Outage monitor for an internet provider's NOC.")
    p.add_argument("--version", action="version", version=f"outagemon {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("-c", "--config", required=True, type=_path, metavar="FILE")
        return sp

    with_config("run", "run the daemon in the foreground")
    with_config("migrate", "apply pending database migrations and exit")
    with_config("check-config", "validate the config, topology and subscribers")
    reload = with_config("reload", "reload a running daemon and say whether it took the change")
    reload.add_argument("--pid", type=int, default=None,
                        help="the daemon's ($MAINPID); default: the one whose pid file is in "
                             "the config's state_dir")  # fmt: skip
    reload.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")
    demo = sub.add_parser("demo", help="a self-contained demonstration on a simulated city")
    demo.add_argument("--port", type=_port, default=8080,
                      help="1-65535, or 0 for any free port (default 8080)")  # fmt: skip
    demo.add_argument("--language", choices=["ru", "en"], default="ru")
    probe = sub.add_parser(
        "probe",
        help="ping targets with the daemon's ICMP engine",
        description="Ping targets with the daemon's ICMP engine. Exit 0 if every target "
        "answered, 1 if some did not, 2 on usage or permission errors.",
    )
    probe.add_argument("-c", "--count", type=int, default=1, help="probes per target")
    probe.add_argument(
        "-i",
        "--interval",
        type=float,
        default=1000.0,
        metavar="MS",
        help="milliseconds between probes of one target (default 1000)",
    )
    probe.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=1000.0,
        metavar="MS",
        help="milliseconds to wait for a reply (at least 1; default 1000)",
    )
    probe.add_argument("-f", "--file", metavar="FILE", help="targets, one a line; - for stdin")
    probe.add_argument("--json", action="store_true", help="one JSON array of results")
    probe.add_argument("targets", nargs="*", metavar="TARGET")
    report = sub.add_parser("report", help="reports from the outage history")
    reports = report.add_subparsers(dest="report", required=True, metavar="REPORT",
                                    parser_class=_Parser)  # fmt: skip
    downtime = reports.add_parser(
        "downtime",
        help="every account's downtime in a period, as CSV (the billing's export)",
        description="Every account's downtime in [FROM, TO) as CSV: outage, planned-works "
        "and unverified minutes apart, and the incidents; the same CSV as "
        "GET /api/v1/reports/downtime. Exit 0 when written, 1 when the database failed, "
        "2 on bad arguments (an -o FILE that cannot be written included).",
    )
    downtime.add_argument("-c", "--config", required=True, type=_path, metavar="FILE")
    downtime.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="WHEN",
        help="a date (midnight in [messages] timezone) or ISO 8601 time",
    )
    downtime.add_argument(
        "--to", dest="end", required=True, metavar="WHEN", help="the same; not included"
    )
    downtime.add_argument(
        "--min-minutes",
        type=float,
        default=0.0,
        metavar="N",
        help="only accounts with at least N minutes in all",
    )
    downtime.add_argument("-o", "--output", type=_path, metavar="FILE",
                          help="write here (atomically) instead of standard output")  # fmt: skip
    lookup = sub.add_parser("lookup", help="ask a running daemon the phone menu's question",
                            description="Ask a running daemon the phone menu's question (GET "
                            "/api/v1/check) and print its answer. Exit 0 when it answered, 1 "
                            "when it could not be asked, 2 on bad arguments.")  # fmt: skip
    lookup.add_argument("--phone", help="the caller's number, in any common notation")
    lookup.add_argument("--account", help="the subscriber's account")
    lookup.add_argument("--address", help="an address as the caller says it ('Ленина 5')")
    lookup.add_argument("--flat", help="the flat, with --address")
    lookup.add_argument("--node", help="a topology node's id (cpe:ACCOUNT: a subscriber's "
                        "router): what a caller it serves hears")  # fmt: skip
    lookup.add_argument(
        "--url", default=LOOKUP_URL,
        help=f"the daemon's base URL, its [http] listen (default {LOOKUP_URL})",
    )  # fmt: skip
    lookup.add_argument(
        "--token-file",
        type=_path,
        metavar="FILE",
        help="a file holding the token (or OUTAGEMON_TOKEN in the environment)",
    )
    lookup.add_argument(
        "--token", default=None, help="deprecated: visible to every local user in ps; use the above"
    )
    lookup.add_argument("--json", action="store_true", help="print the answer as JSON")
    return p


def _lookup(args: argparse.Namespace) -> int:
    """Ask a running daemon; exit 0 when it answered, 1 when it could not be asked."""
    import json
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    keys = ("phone", "account", "address", "node")
    params = {k: v for k in (*keys, "flat") if (v := getattr(args, k))}
    if "flat" in params and "address" not in params:
        print("outagemon lookup: --flat goes with --address (the flat of that address).",
              file=sys.stderr)  # fmt: skip
        return USAGE_ERROR
    if not any(k in params for k in keys):
        print("outagemon lookup: give --phone, --account, --address or --node.", file=sys.stderr)
        return USAGE_ERROR
    base = urllib.parse.urlsplit(args.url)
    if base.scheme not in ("http", "https") or not base.netloc:
        # urllib's own words for "127.0.0.1:8080" are "unknown url type: 127.0.0.1".
        print(f"outagemon lookup: --url must be the daemon's base URL, such as {LOOKUP_URL}, "
              f"not {args.url!r}.", file=sys.stderr)  # fmt: skip
        return USAGE_ERROR
    params["channel"] = "helpdesk"
    url = f"{args.url.rstrip('/')}/api/v1/check?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url)
    token = os.environ.get("OUTAGEMON_TOKEN")
    source = "OUTAGEMON_TOKEN"  # where the token sent came from, for a refusal
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
            print(f"outagemon lookup: cannot read {args.token_file}: {reason}.", file=sys.stderr)
            return USAGE_ERROR
        source = str(args.token_file)
    elif args.token is not None:
        print(
            "outagemon lookup: warning: --token shows the token to every local user (ps, "
            "/proc); use --token-file FILE or OUTAGEMON_TOKEN.",
            file=sys.stderr,
        )
        token = args.token
        source = "--token"
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read())["error"]
        except (ValueError, KeyError):
            reason = e.reason
        if e.code == 401 and not token:
            # The daemon's sentence speaks HTTP ("send Authorization: Bearer TOKEN"): say
            # how this command sends one.
            reason = "a token is required: give it with --token-file FILE or OUTAGEMON_TOKEN."
        elif e.code == 401:
            reason = f"{str(reason).rstrip('.')} (the token sent was from {source})."
        print(f"outagemon lookup: the daemon answered {e.code}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"outagemon lookup: cannot reach {args.url}: {getattr(e, 'reason', e)}.",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
        return 0
    for key in ("status", "incident_id", "root_node", "since", "eta", "node", "address",
                "candidates", "message"):  # fmt: skip
        if body.get(key):
            print(f"{key}: {body[key]}")
    return 0


def _report_downtime(args: argparse.Namespace) -> int:
    """`outagemon report downtime`: the billing CSV, streamed from PostgreSQL's COPY to the
    file (renamed into place when complete) or to standard output."""
    import asyncio
    import math
    import os
    from datetime import UTC, datetime

    import asyncpg

    from outagemon import config, logs
    from outagemon.core import downtime, messages
    from outagemon.db import store
    from outagemon.db.embedded import EmbeddedPostgres
    from outagemon.errors import OutagemonError

    try:
        cfg = config.load(args.config)
        tz = messages.zone(cfg.messages.timezone)
        start, end = downtime.period(args.start, args.end, tz, cfg.history.max_period_days)
    except (OutagemonError, downtime.BadPeriod) as e:
        print(f"outagemon report downtime: {e}", file=sys.stderr)
        return USAGE_ERROR
    if not math.isfinite(args.min_minutes) or args.min_minutes < 0:
        print("outagemon report downtime: --min-minutes must be 0 or more.", file=sys.stderr)
        return USAGE_ERROR
    # Standard output is the CSV, byte for byte: every log line goes to standard error.
    logs.setup(stream=sys.stderr)
    target = args.output
    partial = target.with_name(f".{target.name}.partial") if target is not None else None
    try:
        out = open(partial, "wb") if partial is not None else sys.stdout.buffer  # noqa: SIM115
    except OSError as e:
        # A path that cannot be written is bad input, not a database failure.
        print(
            f"outagemon report downtime: cannot write the report to {target}: {e.strerror}.",
            file=sys.stderr,
        )
        return USAGE_ERROR

    failed: list[OSError] = []

    async def write(chunk: bytes) -> None:
        # Raised from here, an error leaves asyncpg's COPY waiting for ever (a closed pipe
        # hung the command): the first is kept, and the rest of the rows are let go by.
        if not failed:
            try:
                out.write(chunk)
            except OSError as e:
                failed.append(e)

    async def go() -> None:
        embedded = None
        dsn = cfg.database.dsn
        if not dsn:
            embedded = EmbeddedPostgres(cfg.daemon.state_dir)
            dsn = await embedded.start()
        try:
            conn = await store.connection(dsn)
            try:
                await store.downtime_csv(conn, start, end, datetime.now(UTC), args.min_minutes,
                                         write, cfg.history.timeout)  # fmt: skip
            finally:
                await conn.close()
        finally:
            if embedded is not None:
                await embedded.stop()

    try:
        asyncio.run(go())
        if failed:
            raise failed[0]
        out.flush()
        if partial is not None:
            os.fsync(out.fileno())
            out.close()
            os.replace(partial, target)
    except (OutagemonError, OSError, TimeoutError, asyncpg.PostgresError,
            asyncpg.InterfaceError) as e:  # fmt: skip
        if isinstance(e, BrokenPipeError) and partial is None:
            raise  # the reader of standard output has gone: main() ends quietly
        if partial is not None:
            out.close()
            partial.unlink(missing_ok=True)
        if failed and e is failed[0]:
            where = f" to {target}" if target is not None else ""
            print(f"outagemon report downtime: cannot write the report{where}: "
                  f"{failed[0].strerror or failed[0]}.", file=sys.stderr)  # fmt: skip
            return 1
        print(f"outagemon report downtime: {e}", file=sys.stderr)
        return 1
    return 0


def _migrate(config_path: Path) -> int:
    from outagemon import config, logs
    from outagemon.db import migrate
    from outagemon.db.embedded import EmbeddedPostgres
    from outagemon.errors import OutagemonError

    try:
        cfg = config.load(config_path)
    except OutagemonError as e:
        print(e, file=sys.stderr)
        return USAGE_ERROR
    logs.setup(stream=sys.stderr)  # standard output is the command's answer

    async def go() -> list[str]:
        embedded = None
        dsn = cfg.database.dsn
        if not dsn:
            embedded = EmbeddedPostgres(cfg.daemon.state_dir)
            dsn = await embedded.start()
        try:
            return await migrate.migrate(dsn)
        finally:
            if embedded is not None:
                await embedded.stop()

    import asyncio

    try:
        applied = asyncio.run(go())
    except OutagemonError as e:
        print(f"outagemon: {e}", file=sys.stderr)
        return 1
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _check_config(config_path: Path) -> int:
    from collections import Counter

    from outagemon import config
    from outagemon.core import directory, messages
    from outagemon.core.addresses import PhonePlan
    from outagemon.errors import ConfigError

    # Every problem in one pass: the config's, and the topology's and subscribers' as far
    # as the config names them, even when it has problems of its own.
    problems: list[str] = []
    cfg: config.Config | None = None
    try:
        cfg = config.load(config_path)
    except ConfigError as e:
        problems += e.problems
    files = cfg.topology if cfg is not None else config.files_of(config_path)
    if cfg is not None:
        try:
            messages.load(cfg.messages.language, cfg.messages.file, cfg.messages.timezone)
        except ConfigError as e:
            problems += config.keyed(e.problems, cfg)
    loaded = None
    if files is not None:
        try:
            loaded = directory.load(files.file, files.subscribers, PhonePlan.of(files.phones))
        except ConfigError as e:
            problems += config.keyed(e.problems, cfg if cfg is not None else files)
    if cfg is None or loaded is None or problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        if loaded is not None:
            for problem in loaded.problems:
                print(problem, file=sys.stderr)
        return USAGE_ERROR
    for problem in loaded.problems:
        print(problem, file=sys.stderr)
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    d = loaded.directory
    kinds = Counter(n.kind for n in d.topology.nodes.values())
    where = "external" if cfg.database.dsn else f"embedded under {cfg.daemon.state_dir}"
    print(f"{cfg.path}: {'has problems' if loaded.problems else 'valid'}")
    print(f"  database: {where}")
    if cfg.cluster.enabled:
        print(f"  cluster: node {cfg.cluster.node}, lease {cfg.cluster.lease:g} s "
              "(leads or stands by; see the README's two NOC hosts)")  # fmt: skip
    tls = "HTTPS" if cfg.http.tls_cert is not None else "plain HTTP"
    page = "page behind a login" if cfg.http.page_auth else "page open"
    workers = f"; {cfg.http.workers} workers" if cfg.http.workers > 1 else ""
    print(f"  http: {cfg.http.listen} ({tls}, {page}); tokens: {len(cfg.tokens)}{workers}")
    print(
        f"  probe: every {cfg.probe.interval:g} s, timeout {cfg.probe.timeout:g} s, "
        f"down after {cfg.probe.down_after}, up after {cfg.probe.up_after}"
    )
    print(
        f"  topology {cfg.topology.file}: {len(d.topology)} nodes "
        f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
        f"{sum(1 for n in d.topology.nodes.values() if n.probed)} probed, "
        f"{len(d.topology.served)} buildings served"
    )
    n = cfg.notify
    if n.alertmanagers or n.webhooks:
        print(f"  alerts: {len(n.alertmanagers)} Alertmanager(s), {len(n.webhooks)} webhook(s)")
    for label in n.labels:
        if not any(label in node.labels for node in d.topology.nodes.values()):
            print(f"warning: [notify] labels names {label!r}, which no node of the topology "
                  "has (labels: {" + label + ": ...} on a node)", file=sys.stderr)  # fmt: skip
    if cfg.topology.subscribers is not None:
        print(
            f"  subscribers {cfg.topology.subscribers}: {len(d.subscribers)} loaded, "
            f"{len(loaded.problems)} row{'' if len(loaded.problems) == 1 else 's'} with problems"
        )
        plan = cfg.phones  # a CRM's rows refused as "not a phone number" are read by it
        print(f"  phones: a number without its country code is read as +{plan.country_code} "
              f"(trunk prefix {plan.trunk_prefix!r}, {plan.national_digits} national "
              "digits: [phones])")  # fmt: skip
    return USAGE_ERROR if loaded.problems else 0


def _reload(config_path: Path, pid: int | None, timeout: float) -> int:
    """SIGHUP, then the outcome: exit 0 when applied, 1 when refused (with the reasons),
    2 when `pid` is not the daemon (or, without it, no daemon runs for the config's
    state_dir), 3 when applied but some sections wait for a restart."""
    from outagemon import config, reloading
    from outagemon.errors import ConfigError

    try:
        cfg = config.load(config_path)
    except ConfigError as e:
        # The daemon would refuse it too: it is not signalled, and keeps what it runs.
        print("outagemon reload: refused (the daemon was not signalled); the running "
              "configuration is kept:", file=sys.stderr)  # fmt: skip
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    code, text = reloading.request(cfg.daemon.state_dir, pid, timeout)
    print(text, file=sys.stderr if code else sys.stdout)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "demo"):  # daemons: their output is the journal's
        return _dispatch(args)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe is a traceback
        if args.command == "probe" and argv is None:
            # The whole process is what is timed against fping: its output written, it
            # ends without the interpreter's teardown, which frees every target's objects
            # one by one (tens of ms at 60,000 targets) for a process that is leaving.
            import os

            sys.stderr.flush()
            os._exit(code)
    except BrokenPipeError:
        # The reader has gone (`| head -1`): stop quietly, as Unix tools do on SIGPIPE,
        # and keep the interpreter's last flush from failing again.
        import os
        import signal

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from outagemon import daemon

        return daemon.run(args.config)
    if args.command == "migrate":
        return _migrate(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "reload":
        return _reload(args.config, args.pid, args.timeout)
    if args.command == "demo":
        from outagemon.sim import demo

        return demo.main(args.port, args.language)
    if args.command == "probe":
        from outagemon import probecmd

        return probecmd.main(
            args.targets, args.file, args.count, args.interval, args.timeout, args.json
        )
    if args.command == "lookup":
        return _lookup(args)
    if args.command == "report":
        return _report_downtime(args)
    raise AssertionError(args.command)  # argparse allows no other command
