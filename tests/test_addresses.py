"""Addresses and phones: the many ways people write them come to one key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagemon.core import addresses
from outagemon.core.addresses import Address
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


# Letters, digits, the markers' pieces and separators: text where a marker glued to its
# number ("д.5", "кв12", "apt3") is common, and where Latin and Cyrillic letters mix.
_MIXED = st.text(alphabet="дкорпвстлиуapt.5 0,-ёЁDKaZzЯя٣²é", max_size=30)


@given(_MIXED | st.text(max_size=40))
def test_folding_skips_the_markers_expression_only_when_it_would_change_nothing(
    text: str,
) -> None:
    # The shortcut in _fold (no letter, dot, digit sequence: no substitution) against the
    # substitution made on every text.
    lowered = text.lower().replace("ё", "е").replace("—", "-").replace("–", "-")
    assert addresses._fold(text) == addresses._GLUED.sub(r"\1 ", lowered)


@given(_MIXED | st.text(max_size=40))
def test_english_is_told_from_the_folded_text_as_from_its_tokens(text: str) -> None:
    # The check over the text's characters (in C) against the one over its tokens'.
    folded = addresses._fold(text)
    tokens = [t for t in addresses._SPLIT.split(folded) if t and t != "-"]
    by_tokens = any("a" <= c <= "z" for t in tokens for c in t) and not any(
        "а" <= c <= "я" for t in tokens for c in t
    )
    assert addresses._english(folded) == by_tokens


# -- parse's shortcuts against parse as it was written before them ----------------------
# (the same rules, one branch and one character at a time: kept here, verbatim but for
# the names, as the reference the shortcuts must agree with on any text)


def _reference_fold(text: str) -> str:
    text = text.lower().replace("ё", "е").replace("—", "-").replace("–", "-")
    # "д.5" and "кв.12": a marker glued to its number.
    text = re.sub(r"(?<![а-яa-z0-9])(д|дом|кв|корп|к|стр|лит|под|apt)\.?(?=\d)", r"\1 ", text)
    return text


def _reference_street_name(words: list[str]) -> str:
    """Ordinals go last in one spelling: "1-я Парковая" = "Парковая 1я" -> "парковая 1-я"."""
    ordinals: list[str] = []
    rest: list[str] = []
    for w in words:
        m = addresses._ORDINAL.match(w)
        if m:
            ordinals.append(f"{m.group(1)}-{addresses._ENDINGS.get(m.group(2), m.group(2))}")
        else:
            rest.append(w)
    return " ".join(rest + ordinals)


def _reference_parse(text: str) -> Address | None:
    """Parse a written address; None when no street name and house can be found."""
    tokens = [t for t in addresses._SPLIT.split(_reference_fold(text)) if t and t != "-"]
    english = any("a" <= c <= "z" for t in tokens for c in t) and not any(
        "а" <= c <= "я" for t in tokens for c in t
    )
    types = addresses._STREET_TYPES_EN if english else addresses._STREET_TYPES_RU
    street_words: list[str] = []
    street_type = ""
    parts: dict[str, str] = {}
    city = ""
    i = 0
    expect: str | None = None  # the part the previous marker announced
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if expect is not None:
            if expect == "house":
                m = addresses._COMPACT.match(tok)
                if m:
                    _reference_take_compact(m, parts)
                else:
                    parts["house"] = tok
            elif expect == "city":
                city = tok
            else:
                parts[expect] = tok
            expect = None
            continue
        if tok in addresses._CITY and i < len(tokens) and not street_words:
            expect = "city"
        elif tok in types and not street_type:
            street_type = types[tok]
        elif tok in addresses._HOUSE:
            expect = "house"
        elif tok in addresses._BUILDING and "house" in parts:
            expect = "building"
        elif tok in addresses._STRUCTURE and "house" in parts:
            expect = "structure"
        elif tok in addresses._LETTER and "house" in parts:
            expect = "letter"
        elif tok in addresses._FLAT:
            expect = "flat"
        elif tok in addresses._ENTRANCE:
            expect = "entrance"
        elif "house" not in parts and _reference_is_house(tok, street_words, english):
            m = addresses._COMPACT.match(tok)
            assert m is not None
            _reference_take_compact(m, parts)
        elif "house" in parts and len(tok) == 1 and tok.isalpha() and "letter" not in parts:
            parts["letter"] = tok  # "5 А"
        elif "house" in parts and tok.isdigit() and english and "flat" not in parts:
            parts["flat"] = tok
        elif "house" not in parts or english:
            street_words.append(tok)
        # anything else after the house (a stray word) is ignored rather than guessed at
    if not street_words or "house" not in parts:
        return None
    return addresses.Address(
        street=_reference_street_name(street_words),
        street_type=street_type,
        house=parts["house"],
        building=parts.get("building", ""),
        letter=parts.get("letter", ""),
        structure=parts.get("structure", ""),
        flat=parts.get("flat", ""),
        entrance=parts.get("entrance", ""),
        city=city,
        english=english,
    )


def _reference_is_house(tok: str, street_words: list[str], english: bool) -> bool:
    if not addresses._COMPACT.match(tok):
        return False
    # Russian numbers before any street word name the street ("8 Марта"); English
    # addresses put the house number first ("12 Main St").
    return english or bool(street_words)


def _reference_take_compact(m: re.Match[str], parts: dict[str, str]) -> None:
    for name in ("house", "letter", "building", "structure", "flat"):
        value = m.group(name)
        if value:
            parts[name] = value


_WORDS = sorted(
    {
        *addresses._MARKERS,
        "ленина", "мира", "марта", "main", "oak", "зелёная", "1-я", "1я", "2-ая", "3rd",
        "5", "12", "5а", "5к2", "5к2-12", "5стр1", "5/2", "д.5", "кв.12", "корп2", "apt3",
        "а", "b", "-", "—", "٣", "²",
    }
)  # fmt: skip
_ADDRESSLIKE = st.lists(
    st.tuples(st.sampled_from(_WORDS), st.sampled_from([" ", ", ", ". ", ".", "", "-", " ; "])),
    max_size=9,
).map(lambda pairs: "".join(w + sep for w, sep in pairs))


@settings(max_examples=2000)
@given(_ADDRESSLIKE | _MIXED | st.text(max_size=40) | st.sampled_from(WRITTEN))
def test_parse_agrees_with_the_parse_without_shortcuts(text: str) -> None:
    assert addresses.parse(text) == _reference_parse(text)


@pytest.mark.parametrize("text", [c for c, variants in SAME_BUILDING for c in [c, *variants]])
def test_parse_agrees_with_the_parse_without_shortcuts_on_the_written_forms(text: str) -> None:
    assert addresses.parse(text) == _reference_parse(text)
