"""Finding 9: spoken times in `[messages] timezone`, whatever the server's zone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from outagemon import config
from outagemon.core import messages
from outagemon.errors import ConfigError


def test_spoken_times_follow_the_configured_zone_not_the_servers() -> None:
    vladivostok = ZoneInfo("Asia/Vladivostok")  # UTC+10, far from the server's zone
    now = datetime(2026, 11, 26, 22, 0, tzinfo=vladivostok).timestamp()
    eta = datetime(2026, 11, 27, 9, 30, tzinfo=vladivostok).timestamp()
    t = messages.load("ru", timezone="Asia/Vladivostok")
    assert t.when(eta, now) == "завтра в 09:30"
    assert messages.load("en", timezone="Asia/Vladivostok").when(eta, now) == "tomorrow at 09:30"
    midnight = datetime(2026, 11, 27, 0, 0, tzinfo=vladivostok).timestamp()
    assert messages.next_local_day(now, t.tz) == midnight


def test_the_timezone_key_is_checked() -> None:
    cfg = config.parse('[messages]\ntimezone = "Europe/Moscow"\n', Path("/etc/om.toml"))
    assert cfg.messages.timezone == "Europe/Moscow"
    with pytest.raises(ConfigError, match=r"\[messages\] timezone is not a time zone"):
        config.parse('[messages]\ntimezone = "Mars/Olympus"\n', Path("/etc/om.toml"))
