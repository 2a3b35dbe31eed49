"""sd_notify with the standard library: one datagram to $NOTIFY_SOCKET per message."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Tells systemd READY=1, WATCHDOG=1, STOPPING=1; does nothing outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):  # abstract namespace
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never wait on the loop: a message to a full socket is dropped (a blocking
            # send held the event loop for good when nobody read the socket).
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = int(usec) / 2_000_000

    def send(self, message: str) -> bool:
        """Send one message; False if not under systemd or the socket is gone."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
