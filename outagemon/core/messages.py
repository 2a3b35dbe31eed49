"""The sentences callers hear, in Russian and English, in one place an operator can override.

Each status has one template; `{address}`, `{since}`, `{eta}`, `{until}` and `{resolved}`
are filled in, and `{eta_sentence}` becomes the estimate when an engineer set one that is
still ahead, or "work continues" when there is none or it has passed: a caller is never
told a time that is already behind them (planned works past their end, the place still
cut off, are said with `maintenance_overrun` rather than "they end at" a time gone by;
a repair after planned works with `restored_maintenance`). An override file (`[messages]
file`) is TOML with a table per language holding any of these keys.
"""

from __future__ import annotations

import functools
import string
import time
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from outagemon.errors import ConfigError, read_text

DEFAULTS: dict[str, dict[str, str]] = {
    "ru": {
        "outage": "По адресу {address} сейчас авария в сети, мы о ней знаем и уже устраняем. "
        "Неисправность началась {since}. {eta_sentence}",
        "eta_known": "Ориентировочно связь восстановится {eta}.",
        "eta_unknown": "Работы продолжаются, время восстановления уточняется.",
        "maintenance": "По адресу {address} идут плановые работы, они закончатся {until}. "
        "Связь восстановится после их окончания.",
        "maintenance_overrun": "По адресу {address} идут плановые работы, они длятся дольше "
        "запланированного. {eta_sentence}",
        "cpe_down": "Сеть до вашего дома работает, но ваш роутер не отвечает. Проверьте, "
        "включён ли он в розетку, и перезагрузите его: выключите на тридцать секунд и "
        "включите снова.",
        "restored": "Авария по адресу {address} устранена {resolved}. Если интернет не "
        "работает, перезагрузите роутер: выключите его на тридцать секунд и включите снова.",
        "restored_maintenance": "Плановые работы по адресу {address} завершены {resolved}. "
        "Если интернет не работает, перезагрузите роутер: выключите его на тридцать секунд "
        "и включите снова.",
        "ok": "По адресу {address} неисправностей в сети не обнаружено.",
        "unknown": "Сейчас мы не можем проверить состояние сети по вашему адресу. "
        "Оставайтесь на линии, вам ответит оператор.",
        "ambiguous": "Под ваш запрос подходит несколько адресов. Пожалуйста, уточните адрес "
        "или оставайтесь на линии, вам ответит оператор.",
        "ambiguous_flat": "По адресу {address} ответ зависит от номера квартиры. Пожалуйста, "
        "назовите номер квартиры или оставайтесь на линии, вам ответит оператор.",
        "not_found": "Мы не нашли ваш номер или адрес. Оставайтесь на линии, вам ответит оператор.",
    },
    "en": {
        "outage": "There is a network outage at {address}. We know about it and are "
        "working on it. It began {since}. {eta_sentence}",
        "eta_known": "Service should be back {eta}.",
        "eta_unknown": "Work continues; we will have an estimate soon.",
        "maintenance": "Planned works are under way at {address} and end {until}. "
        "Service returns when they are done.",
        "maintenance_overrun": "Planned works are under way at {address} and are taking "
        "longer than planned. {eta_sentence}",
        "cpe_down": "The network up to your building works, but your router does not "
        "answer. Please check that it is plugged in, then switch it off for thirty seconds "
        "and on again.",
        "restored": "The outage at {address} was fixed {resolved}. If your internet still "
        "does not work, switch your router off for thirty seconds and on again.",
        "restored_maintenance": "The planned works at {address} ended {resolved}. If your "
        "internet still does not work, switch your router off for thirty seconds and on again.",
        "ok": "We see no network problem at {address}.",
        "unknown": "We cannot check the network at your address right now. Please stay on "
        "the line for an operator.",
        "ambiguous": "Several addresses match. Please give your full address, or stay on "
        "the line for an operator.",
        "ambiguous_flat": "At {address} the answer depends on your flat. Please give your "
        "flat number, or stay on the line for an operator.",
        "not_found": "We could not find your number or address. Please stay on the line for "
        "an operator.",
    },
}
FIELDS = {"address", "since", "eta", "eta_sentence", "until", "resolved"}

# Abbreviations as they are written, and as a speech synthesiser should say them.
_SPOKEN = {
    "ru": [("ул. ", "улица "), ("пр-т ", "проспект "), ("пер. ", "переулок "),
           ("ш. ", "шоссе "), ("б-р ", "бульвар "), ("пл. ", "площадь "),
           ("наб. ", "набережная "), ("г. ", "город "), ("д. ", "дом "),
           ("корп. ", "корпус "), ("стр. ", "строение "), ("кв. ", "квартира ")],
    "en": [(" St", " Street"), (" Ave", " Avenue"), (" Rd", " Road"), (" Blvd", " Boulevard"),
           ("Apt ", "apartment "), ("Bldg ", "building ")],
}  # fmt: skip
# The flat's marker as written, and its word as said. An English deployment's directory
# is often Russian (the TTS voice reads Cyrillic): its addresses are spelled out too.
_FLAT = {
    "ru": [(", кв. ", "квартира")],
    "en": [(", Apt ", "apartment"), (", кв. ", "квартира")],
}
_RULES = {"ru": _SPOKEN["ru"], "en": [*_SPOKEN["en"], *_SPOKEN["ru"]]}
# A node asked about by name (the helpdesk's `node=`) has no address: the place is said as
# the node, where a default sentence says "at {address}".
_AT_NODE = {
    "ru": [
        ("По адресу {address}", "На узле {address}"),
        ("по адресу {address}", "на узле {address}"),
    ],
    "en": [("at {address}", "at node {address}")],
}
_NODE_WORD = {"ru": "узел", "en": "node"}
_MONTHS_RU = ["января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа",
              "сентября", "октября", "ноября", "декабря"]  # fmt: skip


_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class Texts:
    language: str
    templates: dict[str, str]
    tz: tzinfo | None = None  # spoken times are in this zone ([messages] timezone); None: local
    # Said to callers behind a suspected incident ([callers] sentence); "": what the status says.
    suspected: str = ""
    # The phone menu asks about the same buildings and the same incident times over and
    # over during a surge: their spoken forms are remembered (and forgotten when many).
    _spoken: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _times: dict[tuple[int, int], str] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def plain_address(self) -> bool:
        """Every template puts the address in as it is ({address}: no conversion, no format
        spec), so the flat, the address's last part, appears in the sentence unchanged."""
        return all(
            not conversion and not spec
            for text in self.templates.values()
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name == "address"
        )

    def spoken_address(self, address: str) -> str:
        # The building part is remembered; the flat is said after it.
        building, sep, flat, said = address, "", "", ""
        for marker, word in _FLAT[self.language]:
            building, sep, flat = address.partition(marker)
            if sep:
                said = word
                break
        found = self._spoken.get(building)
        if found is None:
            found = building
            for short, full in _RULES[self.language]:
                found = found.replace(short, full)
            if len(self._spoken) > _CACHE_LIMIT:
                self._spoken.clear()
            self._spoken[building] = found
        if not sep:
            return found
        return f"{found}, {said} {flat}"

    def when(self, moment: float, now: float) -> str:
        """A time (epoch seconds) as it is said: "в 14:05", "завтра в 09:00",
        "26 ноября в 18:00", relative to the local day of `now`."""
        return self._said(moment, now, local_day(now, self.tz))

    def _said(self, moment: float, now: float, day: int) -> str:
        key = (int(moment), day)
        found = self._times.get(key)
        if found is None:
            found = self._when(moment, now)
            if len(self._times) > _CACHE_LIMIT:
                self._times.clear()
            self._times[key] = found
        return found

    def _when(self, moment: float, now: float) -> str:
        local = datetime.fromtimestamp(moment, self.tz)  # local time, as callers count it
        days = (local.date() - datetime.fromtimestamp(now, self.tz).date()).days
        clock = local.strftime("%H:%M")
        if self.language == "ru":
            if days == 0:
                return f"в {clock}"
            if days == 1:
                return f"завтра в {clock}"
            if days == -1:
                return f"вчера в {clock}"
            return f"{local.day} {_MONTHS_RU[local.month - 1]} в {clock}"
        if days == 0:
            return f"at {clock}"
        if days == 1:
            return f"tomorrow at {clock}"
        if days == -1:
            return f"yesterday at {clock}"
        return f"on {local.day} {local:%B} at {clock}"  # "1 December": said, never "01"

    def render(self, status: str, now: float, address: str = "", since: float | None = None,
               eta: float | None = None, until: float | None = None,
               resolved: float | None = None, node: str = "") -> str:  # fmt: skip
        """The sentence for a status; times are epoch seconds. `node`: the place when
        there is no address (a node asked about by name), said as the node."""
        day = local_day(now, self.tz)
        if status == "maintenance" and until is not None and until <= now:
            # Works past their planned end with the place still cut off (a maintenance
            # incident stays one for `resolve_hold` after it): "they end at 14:00" said at
            # 14:00:40 would be a time behind the caller.
            status = "maintenance_overrun"
        template = self.templates[status]
        spoken = self.spoken_address(address) if address else ""
        if not address and node and "{address}" in template:
            said_at = template
            for phrase, at_node in _AT_NODE[self.language]:
                said_at = said_at.replace(phrase, at_node)
            # An operator's wording that says the address some other way: the node, named.
            spoken = node if said_at != template else f"{_NODE_WORD[self.language]} {node}"
            template = said_at

        def when(moment: float) -> str:
            return self._said(moment, now, day)

        eta_sentence = (
            self.templates["eta_known"].format(eta=when(eta))
            if eta is not None and eta > now
            else self.templates["eta_unknown"]
        )
        return template.format(
            address=spoken,
            since=when(since) if since is not None else "",
            eta=when(eta) if eta is not None else "",
            eta_sentence=eta_sentence,
            until=when(until) if until is not None else "",
            resolved=when(resolved) if resolved is not None else "",
        ).strip()


def local_day(now: float, tz: tzinfo | None = None) -> int:
    """The number of the local calendar day (in `tz`, else the server's zone) that `now`
    (epoch seconds) falls in."""
    minute = int(now // 60)  # days and offsets change on whole minutes: one look a minute
    found = _day.get(tz)
    if found is None or found[0] != minute:
        if tz is None:
            offset = time.localtime(now).tm_gmtoff
        else:
            delta = datetime.fromtimestamp(now, tz).utcoffset()
            offset = int(delta.total_seconds()) if delta is not None else 0
        found = _day[tz] = (minute, int((now + offset) // 86400))
    return found[1]


_day: dict[tzinfo | None, tuple[int, int]] = {}  # zone -> (the minute last looked at, its day)


def next_local_day(now: float, tz: tzinfo | None = None) -> float:
    """When the local day after `now`'s begins (epoch seconds)."""
    today = datetime.fromtimestamp(now, tz).date()
    return datetime.combine(today + timedelta(days=1), datetime.min.time(), tz).timestamp()


def zone(name: str) -> tzinfo | None:
    """[messages] timezone: an IANA zone, or None (the server's) for ""."""
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError([f"[messages] timezone {name!r} is not a time zone this system "
                           "knows."]) from None  # fmt: skip


def load(language: str, override: Path | None = None, timezone: str = "") -> Texts:
    """The texts for a language, with an operator's overrides, speaking times in `timezone`
    (the server's when empty); ConfigError names bad ones."""
    templates = dict(DEFAULTS[language])
    tz = zone(timezone)
    if override is None:
        return Texts(language, templates, tz)
    try:
        raw = tomllib.loads(read_text(override))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{override}: not valid TOML: {e}."]) from None
    problems: list[str] = []
    for lang, table in raw.items():
        if lang not in DEFAULTS or not isinstance(table, dict):
            problems.append(f"{override}: [{lang}] is not a language outagemon speaks (ru, en).")
            continue
        for key, text in table.items():
            if key not in DEFAULTS[lang]:
                problems.append(f"{override}: [{lang}] {key} is not a message; "
                                f"they are {', '.join(DEFAULTS[lang])}.")  # fmt: skip
                continue
            if not isinstance(text, str):
                problems.append(f"{override}: [{lang}] {key} must be text.")
                continue
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as e:
                problems.append(f"{override}: [{lang}] {key}: {e}.")
                continue
            unknown = names - FIELDS
            if unknown:
                known = ", ".join(sorted(FIELDS))
                problems.append(f"{override}: [{lang}] {key} uses unknown field(s) "
                                f"{', '.join(sorted(unknown))}; known: {known}.")  # fmt: skip
            elif lang == language:
                templates[key] = text
    if problems:
        raise ConfigError(problems)
    return Texts(language, templates, tz)
