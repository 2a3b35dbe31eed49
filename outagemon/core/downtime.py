"""How long a subscriber was without service: stretches merged, minutes kept apart (pure).

The impact record (`impact` rows, see the history section of db/store.py) says which
incidents cut a subscriber's serving node off, when and why. Here those stretches, which
overlap where incidents do, become the intervals a person reads (merged), and minutes
in three kinds that billing treats differently: outage, planned works (less any outage
at the same moment) and unverified (any of it while the monitor could not see). The
billing export computes the same in SQL (store.DOWNTIME); the tests hold the two equal.

Times are integer microseconds since the epoch, so minutes round the same way here as
in PostgreSQL.
"""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal

US_PER_MINUTE = 60_000_000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A time whose "+03:00" came through a URL unencoded: "+" is a space there.
_LOST_PLUS = re.compile(r"(?<=\d) (?=\d{2}(:?\d{2})?$)")


class BadPeriod(ValueError):
    """A period asked about that cannot be answered, with the sentence that says why."""


def moment(raw: str, name: str, tz: tzinfo | None) -> datetime:
    """A bound of a period (UTC): an ISO 8601 time with an offset, or a date (its midnight
    in `tz`, else the server's zone)."""
    example = "such as 2026-11-01 or 2026-11-01T00:00:00+03:00"
    try:
        if _DATE.match(raw):
            day = date.fromisoformat(raw)
            local = datetime(day.year, day.month, day.day, tzinfo=tz)
            return (local if tz is not None else local.astimezone()).astimezone(UTC)
        _lost_plus(raw, name)
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            raise BadPeriod(f"{name} {raw!r} has no UTC offset; add one, such as +03:00 or Z.")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        if isinstance(e, BadPeriod):
            raise
        raise BadPeriod(f"{name} {raw!r} is not a date or an ISO 8601 time ({example}).") from None


def _lost_plus(raw: str, name: str) -> None:
    """Refuse, saying why, a time with a space where its + offset was (an unencoded URL)."""
    if not _LOST_PLUS.search(raw):
        return
    try:
        meant = datetime.fromisoformat(_LOST_PLUS.sub("+", raw))
    except ValueError:
        return
    if meant.tzinfo is not None:
        written = _LOST_PLUS.sub("%2B", raw)
        raise BadPeriod(f"{name} {raw!r} has a space where a + offset was: write + as %2B "
                        f"in a URL ({name}={written}).")  # fmt: skip


def period(raw_from: str, raw_to: str, tz: tzinfo | None,
           max_days: int) -> tuple[datetime, datetime]:  # fmt: skip
    """[from, to) as asked: both given, in order, no longer than `max_days`."""
    raw_from, raw_to = raw_from.strip(), raw_to.strip()
    if not raw_from or not raw_to:
        missing = " and ".join(n for n, v in (("from", raw_from), ("to", raw_to)) if not v)
        raise BadPeriod(f"give the period: {missing} missing (both from and to, such as "
                        "from=2026-11-01 and to=2026-12-01; to is not included).")  # fmt: skip
    start, end = moment(raw_from, "from", tz), moment(raw_to, "to", tz)
    if end == start:
        raise BadPeriod(f"the period is empty: to must be after from (from={raw_from}, "
                        f"to={raw_to}).")  # fmt: skip
    if end < start:
        raise BadPeriod(f"the period ends before it begins: to ({raw_to}) must be after "
                        f"from ({raw_from}).")  # fmt: skip
    if end - start > timedelta(days=max_days):
        days = f"{(end - start).total_seconds() / 86400:.4g}"
        raise BadPeriod(f"the period is {days} days long; at most {max_days} "
                        "([history] max_period_days): ask for a shorter one.")  # fmt: skip
    return start, end


class Cause(enum.StrEnum):
    """Why a node was cut off: the incident's kind at the time (values as stored)."""

    OUTAGE = "outage"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class Hit:
    """An incident cut the subscriber off from `start` to `end` (microseconds)."""

    incident: int
    cause: Cause
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Stretch:
    """A time the subscriber was without service, merged over the incidents that overlap
    in it; microseconds of each kind within it."""

    start: int
    end: int
    incidents: tuple[int, ...]
    outage: int
    planned: int
    unverified: int


@dataclass(frozen=True, slots=True)
class Downtime:
    stretches: tuple[Stretch, ...]
    incidents: tuple[int, ...]
    outage: int  # microseconds
    planned: int
    unverified: int

    @property
    def total(self) -> int:
        return self.outage + self.planned + self.unverified


def minutes(us: int) -> Decimal:
    """Microseconds as minutes to one decimal, halves up (as PostgreSQL's round)."""
    return (Decimal(us) / US_PER_MINUTE).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def downtime(hits: list[Hit], blind: list[tuple[int, int]]) -> Downtime:
    """The stretches and minutes of these hits, with `blind` (start, end) periods making
    what falls inside them unverified. A moment counts once: unverified when blind, else
    outage when any outage covers it, else planned works."""
    points = sorted({t for h in hits for t in (h.start, h.end)}
                    | {t for b in blind for t in b})  # fmt: skip
    stretches: list[Stretch] = []
    current: dict[str, int] | None = None
    members: set[int] = set()
    start = 0
    for a, b in itertools.pairwise(points):
        active = [h for h in hits if h.start <= a and h.end >= b]
        if not active:
            if current is not None:
                stretches.append(_stretch(start, a, members, current))
                current = None
            continue
        if current is None:
            current, members, start = {"o": 0, "p": 0, "u": 0}, set(), a
        members.update(h.incident for h in active)
        span = b - a
        if any(s <= a and e >= b for s, e in blind):
            current["u"] += span
        elif any(h.cause is Cause.OUTAGE for h in active):
            current["o"] += span
        else:
            current["p"] += span
    if current is not None:
        stretches.append(_stretch(start, points[-1], members, current))
    return Downtime(
        tuple(stretches),
        tuple(sorted({h.incident for h in hits})),
        sum(s.outage for s in stretches),
        sum(s.planned for s in stretches),
        sum(s.unverified for s in stretches),
    )


def _stretch(start: int, end: int, members: set[int], kinds: dict[str, int]) -> Stretch:
    return Stretch(start, end, tuple(sorted(members)), kinds["o"], kinds["p"], kinds["u"])


# -- what the helpdesk reads out ---------------------------------------------------------

_MONTHS_RU = ["января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа",
              "сентября", "октября", "ноября", "декабря"]  # fmt: skip


def _date(us: int, language: str, tz: tzinfo | None) -> str:
    d = datetime.fromtimestamp(us / 1e6, tz)
    if language == "ru":
        return f"{d.day} {_MONTHS_RU[d.month - 1]} {d.year} г. {d:%H:%M}"
    return f"{d.day} {d:%B %Y} {d:%H:%M}"  # "1 December 2026", as the Russian "1 декабря"


def _duration(us: int, language: str) -> str:
    """Whole minutes as hours and minutes ("3 ч 5 мин", "3 h 5 min"); under a minute, "<1"."""
    total = int(minutes(us).to_integral_value(rounding=ROUND_HALF_UP))
    if us > 0 and total == 0:
        return "меньше минуты" if language == "ru" else "less than a minute"
    h, m = divmod(total, 60)
    hs, ms = ("ч", "мин") if language == "ru" else ("h", "min")
    if h and m:
        return f"{h} {hs} {m} {ms}"
    return f"{h} {hs}" if h else f"{m} {ms}"


def _breaks_ru(n: int) -> str:
    if n % 10 == 1 and n % 100 != 11:
        return "перерыв"
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return "перерыва"
    return "перерывов"


def sentence(d: Downtime, account: str, start: int, end: int, language: str,
             tz: tzinfo | None = None) -> str:  # fmt: skip
    """One paragraph a helpdesk operator can read out about the period [start, end)."""
    since, until = _date(start, language, tz), _date(end, language, tz)
    if language == "ru":
        if not d.stretches:
            return (f"С {since} по {until} перерывов в услуге по лицевому счёту {account} "
                    "не было.")  # fmt: skip
        parts = [f"авария {_duration(d.outage, 'ru')}"] if d.outage else []
        if d.planned:
            parts.append(f"плановые работы {_duration(d.planned, 'ru')}")
        if d.unverified:
            parts.append(f"не подтверждено мониторингом {_duration(d.unverified, 'ru')}")
        n = len(d.stretches)
        times = _breaks_ru(n)
        return (f"С {since} по {until} по лицевому счёту {account} услуга не предоставлялась "
                f"{_duration(d.total, 'ru')} ({n} {times}): {', '.join(parts)}.")  # fmt: skip
    if not d.stretches:
        return f"From {since} to {until}, account {account} had no break in service."
    parts = [f"outage {_duration(d.outage, 'en')}"] if d.outage else []
    if d.planned:
        parts.append(f"planned works {_duration(d.planned, 'en')}")
    if d.unverified:
        parts.append(f"not verified by the monitor {_duration(d.unverified, 'en')}")
    n = len(d.stretches)
    return (f"From {since} to {until}, account {account} was without service for "
            f"{_duration(d.total, 'en')} ({n} break{'s' if n != 1 else ''}): "
            f"{', '.join(parts)}.")  # fmt: skip
