"""Addresses and phones: the many ways people write them come to one key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outagemon.core import addresses
from outagemon.sim import citygen

SAME_BUILDING = [
    ("ул. Ленина, д. 5", ["улица Ленина, дом 5", "Ленина ул. 5", "ЛЕНИНА УЛ, Д.5", "ул Ленина д5"]),
    ("пр-т Мира, д. 10", ["проспект Мира 10", "пр. Мира, 10", "Мира пр-кт, д 10"]),
    ("пер. Садовый, д. 3", ["переулок Садовый 3", "Садовый пер., 3"]),
    ("ш. Московское, д. 1", ["Московское шоссе, 1"]),
    ("б-р Победы, д. 2", ["бульвар Победы 2", "Победы б-р, д. 2"]),
    ("пл. Ленина, д. 1", ["площадь Ленина 1"]),
    ("наб. Речная, д. 4", ["набережная Речная, 4"]),
    (
        "ул. Ленина, д. 5 корп. 2",
        ["ул. Ленина, 5к2", "Ленина улица 5 к 2", "Ленина ул 5, корпус 2"],
    ),
    ("ул. Ленина, д. 5 стр. 1", ["ул. Ленина 5 строение 1", "ул Ленина 5стр1"]),
    ("ул. Ленина, д. 5А", ["ул. Ленина 5 лит. А", "ул. Ленина 5 литера а", "ул. Ленина д 5 А"]),
    ("ул. Зелёная, д. 1", ["ул. Зеленая, д. 1", "ул. ЗЕЛЁНАЯ 1"]),
    ("ул. 1-я Парковая, д. 5", ["ул. Парковая 1-я, д. 5", "1-я Парковая улица, 5"]),
    ("ул. 8 Марта, д. 3", ["улица 8 марта дом 3"]),
    ("12 Main St", ["12 Main Street", "Main St 12", "12 main st."]),
    ("7 Oak Ave", ["7 Oak Avenue"]),
]


@pytest.mark.parametrize(("canonical", "variants"), SAME_BUILDING)
def test_written_forms_of_one_building_share_its_key(canonical: str, variants: list[str]) -> None:
    expected = addresses.key(canonical)
    assert expected is not None
    for variant in variants:
        assert addresses.key(variant) == expected, variant


@pytest.mark.parametrize(
    ("text", "house", "building", "flat"),
    [
        ("Ленина 5к2-12", "5", "2", "12"),
        ("ул. Ленина, д. 5, корп. 2, кв. 12", "5", "2", "12"),
        ("Ленина 5-12", "5", "", "12"),
        ("Ленина д.5 кв.3", "5", "", "3"),
        ("Ленина 5/2 кв 7", "5/2", "", "7"),
        ("12 Main St, Apt 5", "12", "", "5"),
    ],
)
def test_house_building_and_flat_are_told_apart(
    text: str, house: str, building: str, flat: str
) -> None:
    parsed = addresses.parse(text)
    assert parsed is not None
    assert (parsed.house, parsed.building, parsed.flat) == (house, building, flat)


def test_entrance_is_read_and_not_part_of_the_building() -> None:
    parsed = addresses.parse("ул. Ленина, д. 5, под. 2, кв. 40")
    assert parsed is not None
    assert parsed.entrance == "2" and parsed.flat == "40"
    assert parsed.key == addresses.key("ул. Ленина, д. 5")


def test_different_streets_types_and_houses_differ() -> None:
    assert addresses.key("ул. Ленина 5") != addresses.key("пр-т Ленина 5")
    assert addresses.key("ул. Ленина 5") != addresses.key("ул. Ленина 7")
    assert addresses.key("ул. Ленина 5") != addresses.key("ул. Ленина 5к1")


@pytest.mark.parametrize("text", ["", "Ленина", "дом 5", "кв. 12", "!!!"])
def test_text_without_street_or_house_is_not_an_address(text: str) -> None:
    assert addresses.parse(text) is None


def test_addresses_are_written_out_canonically() -> None:
    parsed = addresses.parse("ленина ул 5к2-12")
    assert parsed is not None
    assert parsed.text() == "ул. Ленина, д. 5, корп. 2, кв. 12"
    assert parsed.text(with_flat=False) == "ул. Ленина, д. 5, корп. 2"


@pytest.mark.parametrize(
    "written",
    ["8 (921) 123-45-67", "+7 921 1234567", "79211234567", "89211234567", "9211234567",
     "+7 (921) 123 45 67", " 8-921-123-45-67 "],
)  # fmt: skip
def test_russian_phone_notations_become_e164(written: str) -> None:
    assert addresses.normalise_phone(written) == "+79211234567"


@pytest.mark.parametrize("written", ["", "123", "abc", "+1", "8921123456789"])
def test_non_phones_are_refused(written: str) -> None:
    assert addresses.normalise_phone(written) is None


def test_foreign_numbers_keep_their_country_code() -> None:
    assert addresses.normalise_phone("+375 29 123-45-67") == "+375291234567"


@given(st.text(alphabet="0123456789 +-()٣x\t", max_size=20))
def test_a_phone_is_its_decimal_digits_whatever_separates_them(written: str) -> None:
    # The contract, written alone: every decimal digit kept in order, nothing else; a
    # leading + keeps 8 to 15 of them; else Russian 11 (7 or 8 first) or 10 digits.
    raw = written.strip()
    digits = "".join(c for c in raw if c.isdecimal())
    if raw.startswith("+"):
        expected = f"+{digits}" if 8 <= len(digits) <= 15 else None
    elif len(digits) == 11 and digits[0] in "78":
        expected = f"+7{digits[1:]}"
    else:
        expected = f"+7{digits}" if len(digits) == 10 else None
    assert addresses.normalise_phone(written) == expected


CITY = citygen.generate(aggregations=3, access_per_aggregation=30, subscribers_per_access=1)
WRITTEN = sorted({row[2] for row in CITY.rows})


@given(st.sampled_from(WRITTEN), st.sampled_from(["", " кв. 7", "-7"]))
def test_normalising_is_idempotent(written: str, flat: str) -> None:
    parsed = addresses.parse(written + flat)
    assert parsed is not None
    again = addresses.parse(parsed.text())
    assert again == parsed


@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_without_error(text: str) -> None:
    parsed = addresses.parse(text)
    if parsed is not None:
        assert addresses.parse(parsed.text()) is not None
