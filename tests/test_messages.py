"""The spoken texts: times said naturally, estimates never in the past, operator overrides."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from outagemon.core import messages
from outagemon.errors import ConfigError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0


def test_times_are_said_relative_to_today() -> None:
    t = messages.load("ru")
    local = datetime.fromtimestamp(NOW)
    assert t.when(NOW, NOW) == f"в {local:%H:%M}"
    assert t.when(NOW + DAY, NOW).startswith("завтра в ")
    assert t.when(NOW - DAY, NOW).startswith("вчера в ")
    assert "декабря" in t.when(NOW + 10 * DAY, NOW)
    assert messages.load("en").when(NOW + DAY, NOW).startswith("tomorrow at ")


def test_an_estimate_that_passed_is_never_spoken() -> None:
    t = messages.load("ru")
    ahead = t.render("outage", NOW, address="ул. Ленина, д. 5", since=NOW,
                     eta=NOW + 3 * HOUR)  # fmt: skip
    assert "Ориентировочно связь восстановится" in ahead
    passed = t.render("outage", NOW, address="ул. Ленина, д. 5", since=NOW,
                      eta=NOW - 300)  # fmt: skip
    assert "Работы продолжаются" in passed and "Ориентировочно" not in passed


def test_addresses_are_spelled_out_for_speech() -> None:
    t = messages.load("ru")
    assert t.spoken_address("пр-т Мира, д. 10, корп. 2, кв. 7") == (
        "проспект Мира, дом 10, корпус 2, квартира 7"
    )
    assert messages.load("en").spoken_address("12 Main St, Apt 5") == "12 Main Street, apartment 5"


# Sorted: a set's order changes from one process to the next, and pytest-xdist's workers
# must collect the same tests in the same order.
@pytest.mark.parametrize(
    "status", sorted(messages.DEFAULTS["ru"].keys() - {"eta_known", "eta_unknown"})
)
def test_every_status_has_a_sentence_in_both_languages(status: str) -> None:
    for language in ("ru", "en"):
        text = messages.load(language).render(status, NOW, address="ул. Ленина, д. 5",
                                               since=NOW, until=NOW, resolved=NOW)  # fmt: skip
        assert text and "{" not in text


def test_an_operator_override_replaces_a_text(tmp_path: Path) -> None:
    override = tmp_path / "messages.toml"
    override.write_text('[ru]\nok = "Всё в порядке по адресу {address}."\n')
    t = messages.load("ru", override)
    assert t.render("ok", NOW, address="ул. Ленина, д. 5") == (
        "Всё в порядке по адресу улица Ленина, дом 5."
    )


def test_a_broken_override_names_each_problem(tmp_path: Path) -> None:
    override = tmp_path / "messages.toml"
    override.write_text('[ru]\nokk = "x"\noutage = "{adress}"\n[de]\nok = "x"\n')
    with pytest.raises(ConfigError) as info:
        messages.load("ru", override)
    text = "\n".join(info.value.problems)
    assert "[ru] okk is not a message" in text
    assert "[ru] outage uses unknown field(s) adress" in text
    assert "[de] is not a language" in text
    with pytest.raises(ConfigError, match="no such file"):
        messages.load("ru", tmp_path / "missing.toml")


def test_a_remembered_time_follows_the_local_day(monkeypatch: pytest.MonkeyPatch) -> None:
    # Moscow's day turns three hours before UTC's: an answer remembered on the evening of
    # the 26th must not still say "tomorrow" after local midnight.
    monkeypatch.setenv("TZ", "MSK-3")  # POSIX form: no tzdata needed
    time.tzset()
    try:
        msk = timezone(timedelta(hours=3))
        t = messages.load("ru")
        eta = datetime(2026, 11, 27, 18, 0, tzinfo=msk).timestamp()
        assert t.when(eta, datetime(2026, 11, 26, 23, 0, tzinfo=msk).timestamp()) == (
            "завтра в 18:00"
        )
        assert t.when(eta, datetime(2026, 11, 27, 1, 0, tzinfo=msk).timestamp()) == "в 18:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_english_sentences_spell_out_a_russian_address_for_the_voice() -> None:
    """A Russian directory under `--language en`: the TTS voice reads Cyrillic, so the
    abbreviations are said as words, as in Russian, and the flat with its word."""
    t = messages.load("en")
    said = t.render("outage", NOW, address="пр-т Горького, д. 1, кв. 25", since=NOW)
    assert said.startswith("There is a network outage at проспект Горького, дом 1, квартира 25.")
    assert t.spoken_address("пер. Кутузова, д. 1, корп. 1") == "переулок Кутузова, дом 1, корпус 1"
    assert t.spoken_address("12 Main St, Apt 5") == "12 Main Street, apartment 5"


@pytest.mark.parametrize("language", ["ru", "en"])
def test_a_node_asked_by_name_is_said_as_the_node_never_as_an_empty_address(
    language: str,
) -> None:
    t = messages.load(language)
    for status in ("outage", "maintenance", "restored", "ok"):
        said = t.render(status, NOW, since=NOW, until=NOW, resolved=NOW, node="agg-2")
        assert "agg-2" in said and "  " not in said and " ." not in said, said
        assert "адресу" not in said and "at ." not in said, said
    assert (
        t.render("ok", NOW, node="agg-2")
        == {
            "ru": "На узле agg-2 неисправностей в сети не обнаружено.",
            "en": "We see no network problem at node agg-2.",
        }[language]
    )


def test_a_node_in_an_operators_own_wording_is_named_as_a_node(tmp_path: Path) -> None:
    override = tmp_path / "messages.toml"
    override.write_text('[ru]\nok = "Всё в порядке: {address}."\n')
    t = messages.load("ru", override)
    assert t.render("ok", NOW, node="agg-2") == "Всё в порядке: узел agg-2."
    assert t.render("ok", NOW, address="ул. Ленина, д. 5") == "Всё в порядке: улица Ленина, дом 5."
