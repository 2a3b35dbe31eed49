"""A reload's outcome, for `systemctl reload` to report: the daemon writes it to a small
file in state_dir, and `outagemon reload` (the unit's ExecReload=) sends SIGHUP and waits
for an outcome that began after it, exiting 1 with the reasons when it was refused.

(systemd 253's Type=notify-reload would carry the outcome itself; Debian 12 has 252, so
the daemon also sends RELOADING=1 / READY=1 around each reload, for `systemctl status`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

FILE_NAME = "reload.json"
PID_FILE = "daemon.pid"  # the running daemon's pid: `outagemon reload` signals no other
# Exit codes of `outagemon reload`: applied; refused or no outcome; not a daemon to signal;
# applied, but some changed sections wait for a restart (`systemctl reload` then fails, and
# its journal names them: a change that did not take effect should not pass unnoticed).
APPLIED, REFUSED, NOT_A_DAEMON, RESTART_NEEDED = 0, 1, 2, 3


SKIPPED_SHOWN = 20  # subscriber rows left out that `outagemon reload` prints, at most


def write(state_dir: Path, started: float, outcome: str, problems: list[str],
          restart: list[str] | None = None, skipped: list[str] | None = None) -> None:  # fmt: skip
    """Record a reload that began at `started` (time.monotonic()): applied or refused,
    what it changed that waits for a restart, and the subscriber rows it left out."""
    path = state_dir / FILE_NAME
    tmp = path.with_name(FILE_NAME + ".new")
    rows = skipped or []
    tmp.write_text(json.dumps({"started": started, "outcome": outcome, "problems": problems,
                               "restart": restart or [], "skipped": rows[:SKIPPED_SHOWN],
                               "skipped_total": len(rows)}, ensure_ascii=False))  # fmt: skip
    os.replace(tmp, path)


def read(state_dir: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((state_dir / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def mark(state_dir: Path) -> None:
    """Write this process's pid, as the daemon of `state_dir`."""
    path = state_dir / PID_FILE
    tmp = path.with_name(PID_FILE + ".new")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def unmark(state_dir: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        path = state_dir / PID_FILE
        if int(path.read_text()) == os.getpid():
            path.unlink()


def not_the_daemon(state_dir: Path, pid: int) -> str | None:
    """Why `pid` is not the outagemon daemon of `state_dir`, or None when it is: its
    command line is `outagemon run`, and the daemon's pid file (when there) names it."""
    try:
        marked: int | None = int((state_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        marked = None
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return f"no process {pid}."
    except OSError:  # hidden from us (ProtectProc=): the pid file alone decides
        args = None
    if args is not None:
        names = [os.path.basename(a.decode(errors="replace")) for a in args]
        if not any(n.startswith("outagemon") for n in names) or "run" not in names:
            shown = " ".join(names).strip()[:80] or "?"
            return (f"process {pid} ({shown}) is not an outagemon daemon (`outagemon run`); "
                    "it was not signalled.")  # fmt: skip
    if marked is not None and marked != pid:
        return (f"process {pid} is not the daemon of {state_dir}, which is process {marked} "
                f"(its {PID_FILE}); it was not signalled.")  # fmt: skip
    if args is None and marked is None:
        return (f"cannot tell whether process {pid} is an outagemon daemon (its command line "
                f"cannot be read, and {state_dir / PID_FILE} is not there); it was not "
                "signalled.")  # fmt: skip
    return None


def _left_out(found: dict[str, Any]) -> str:
    """The subscriber rows a reload left out, as lines to print after its outcome (the
    rest was loaded: one bad row of a CRM export does not refuse the reload)."""
    rows = [str(r) for r in found.get("skipped", [])]
    total = max(int(found.get("skipped_total", 0) or 0), len(rows))
    if not total:
        return ""
    more = f"\n... and {total - len(rows)} more (see the daemon's log)" if total > len(rows) else ""
    return (f"\n{total} subscriber row(s) left out (the others are loaded):\n"
            + "\n".join(rows) + more)  # fmt: skip


def find(state_dir: Path) -> int | str:
    """The daemon of `state_dir`, from the pid file it writes there: its pid (checked like
    a given one, by `not_the_daemon`), or the sentence saying why there is none."""
    path = state_dir / PID_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return (f"no outagemon daemon runs for {state_dir} ({path}, which the daemon writes "
                "while it runs, is not there); nothing was signalled.")  # fmt: skip
    except OSError as e:
        return (f"cannot read {path} ({e.strerror}) to find the daemon; give its pid with "
                "--pid. Nothing was signalled.")  # fmt: skip
    try:
        pid = int(text)
    except ValueError:
        return f"{path} does not hold a process id; nothing was signalled."
    if not Path(f"/proc/{pid}").exists():
        return (f"no outagemon daemon runs for {state_dir}: its {PID_FILE} names process "
                f"{pid}, which has ended (the daemon was killed); nothing was "
                "signalled.")  # fmt: skip
    why = not_the_daemon(state_dir, pid)
    if why is None:
        return pid
    demo = _demo(pid)
    if demo:
        # Alive, and the one that wrote the file: not stale, only not a reloadable daemon.
        return (f"{state_dir} is the state of `{demo}` (process {pid}), the demo, which "
                "takes no reload: `outagemon reload` "
                "signals only an `outagemon run` daemon. Nothing was signalled.")  # fmt: skip
    return f"no outagemon daemon runs for {state_dir}: its {PID_FILE} is stale; {why}"


def _demo(pid: int) -> str:
    """`outagemon demo ...` when that is process `pid`'s command line, else ""."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    names = [os.path.basename(a.decode(errors="replace")) for a in args if a]
    at = next((i for i, n in enumerate(names) if n.startswith("outagemon")), None)
    if at is None or names[at + 1 : at + 2] != ["demo"]:
        return ""
    return " ".join(["outagemon", *names[at + 1 :]])[:80]


def request(state_dir: Path, pid: int | None, timeout: float = 120.0) -> tuple[int, str]:
    """Signal the daemon (`pid`, or the one its pid file in `state_dir` names) and wait for
    the outcome: (exit code, what to print)."""
    if pid is None:
        daemon = find(state_dir)
        if isinstance(daemon, str):
            return NOT_A_DAEMON, f"outagemon reload: {daemon}"
        pid = daemon
    why = not_the_daemon(state_dir, pid)
    if why is not None:
        return NOT_A_DAEMON, f"outagemon reload: {why}"
    asked = time.monotonic()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return REFUSED, f"outagemon reload: no process {pid}."
    except PermissionError:
        return REFUSED, f"outagemon reload: not allowed to signal process {pid}."
    deadline = asked + timeout
    while time.monotonic() < deadline:
        found = read(state_dir)
        if found is not None and float(found.get("started", 0)) >= asked:
            if found.get("outcome") == "applied":
                restart = [str(s) for s in found.get("restart", [])]
                left_out = _left_out(found)
                if restart:
                    return RESTART_NEEDED, (
                        "reloaded; these sections need a restart to take effect: "
                        f"{', '.join(restart)} (systemctl restart outagemon).{left_out}"
                    )
                return APPLIED, f"reloaded.{left_out}"
            problems = "\n".join(str(p) for p in found.get("problems", []))
            return REFUSED, (
                f"outagemon reload: refused; the running configuration is kept:\n{problems}"
            )
        time.sleep(0.1)
    return REFUSED, f"outagemon reload: no outcome from process {pid} within {timeout:g} s."
