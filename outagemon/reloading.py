"""A reload's outcome, for `systemctl reload` to report: the daemon writes it to a small
file in state_dir, and `outagemon reload` (the unit's ExecReload=) sends SIGHUP and waits
for an outcome that began after it, exiting 1 with the reasons when it was refused.

(systemd 253's Type=notify-reload would carry the outcome itself; Debian 12 has 252, so
the daemon also sends RELOADING=1 / READY=1 around each reload, for `systemctl status`.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

FILE_NAME = "reload.json"


def write(state_dir: Path, started: float, outcome: str, problems: list[str]) -> None:
    """Record a reload that began at `started` (time.monotonic()): applied or refused."""
    path = state_dir / FILE_NAME
    tmp = path.with_name(FILE_NAME + ".new")
    tmp.write_text(json.dumps({"started": started, "outcome": outcome, "problems": problems},
                              ensure_ascii=False))  # fmt: skip
    os.replace(tmp, path)


def read(state_dir: Path) -> dict[str, Any] | None:
    try:
        found = json.loads((state_dir / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def request(state_dir: Path, pid: int, timeout: float = 120.0) -> tuple[int, str]:
    """Signal the daemon and wait for the outcome: (exit code, what to print)."""
    asked = time.monotonic()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return 1, f"outagemon reload: no process {pid}."
    except PermissionError:
        return 1, f"outagemon reload: not allowed to signal process {pid}."
    deadline = asked + timeout
    while time.monotonic() < deadline:
        found = read(state_dir)
        if found is not None and float(found.get("started", 0)) >= asked:
            if found.get("outcome") == "applied":
                return 0, "reloaded."
            problems = "\n".join(str(p) for p in found.get("problems", []))
            return 1, f"outagemon reload: refused; the running configuration is kept:\n{problems}"
        time.sleep(0.1)
    return 1, f"outagemon reload: no outcome from process {pid} within {timeout:g} s."
