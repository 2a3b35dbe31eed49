"""Postal addresses and phone numbers, normalised so a caller's words find a subscriber (pure).

An address is parsed into parts (street type and name, house, building, letter,
structure, flat) rather than compared as a string, because callers and CRM exports
write the same house many ways: "ул. Ленина, д. 5, корп. 2, кв. 12", "Ленина 5к2-12",
"ленина улица 5 к 2 кв 12". The canonical key joins the parts that name a building.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Protocol

# Street types, every written form -> the canonical abbreviation.
_STREET_TYPES_RU = {
    "ул": "ул", "улица": "ул",
    "пр": "пр-т", "пр-т": "пр-т", "пр-кт": "пр-т", "просп": "пр-т", "проспект": "пр-т",
    "пер": "пер", "переулок": "пер",
    "ш": "ш", "шоссе": "ш",
    "б-р": "б-р", "бул": "б-р", "бульв": "б-р", "бульвар": "б-р",
    "пл": "пл", "площадь": "пл",
    "наб": "наб", "набережная": "наб",
    "пр-д": "проезд", "проезд": "проезд",
    "туп": "туп", "тупик": "туп",
    "мкр": "мкр", "микрорайон": "мкр",
    "аллея": "аллея",
}  # fmt: skip
_STREET_TYPES_EN = {
    "st": "St", "street": "St",
    "ave": "Ave", "av": "Ave", "avenue": "Ave",
    "rd": "Rd", "road": "Rd",
    "blvd": "Blvd", "boulevard": "Blvd",
    "ln": "Ln", "lane": "Ln",
    "dr": "Dr", "drive": "Dr",
    "sq": "Sq", "square": "Sq",
    "pl": "Pl", "place": "Pl",
    "ct": "Ct", "court": "Ct",
    "hwy": "Hwy", "highway": "Hwy",
}  # fmt: skip
_HOUSE = {"д", "дом", "house", "no", "№"}
_BUILDING = {"к", "корп", "корпус", "bldg", "building"}
_STRUCTURE = {"стр", "строение", "с"}
_LETTER = {"лит", "литер", "литера"}
_FLAT = {"кв", "квартира", "apt", "apartment", "flat", "unit"}
_ENTRANCE = {"под", "подъезд", "entrance"}
_CITY = {"г", "город", "city"}
# Every word any of the above is: a token outside it is part of a name or a number.
_MARKERS = frozenset().union(_STREET_TYPES_RU, _STREET_TYPES_EN, _HOUSE, _BUILDING, _STRUCTURE,
                             _LETTER, _FLAT, _ENTRANCE, _CITY)  # fmt: skip

# "5", "5а", "5/2", "5к2", "5к2-12", "5 стр 1" is handled token by token.
_COMPACT = re.compile(
    r"^(?P<house>\d+(?:/\d+)?)(?P<letter>[а-яa-z](?!\d))?"
    r"(?:(?:к|корп)(?P<building>\d+))?(?:стр(?P<structure>\d+))?"
    r"(?:-(?P<flat>\d+))?$"
)
_ORDINAL = re.compile(r"^(\d+)-?(я|й|ая|ый|ой|ий|е|ое|го|st|nd|rd|th)$")
# Long endings to the short ones people write after a hyphen: "1-ая" = "1-я".
_ENDINGS = {"ая": "я", "ый": "й", "ой": "й", "ий": "й", "ое": "е"}
_SPLIT = re.compile(r"[\s,.;:\"'«»()]+")


@dataclass(frozen=True, slots=True)
class Address:
    street: str  # the name, lower case, ordinals last: "парковая 1"
    street_type: str  # canonical abbreviation, "" when not written
    house: str
    building: str = ""
    letter: str = ""
    structure: str = ""
    flat: str = ""
    entrance: str = ""
    city: str = ""
    english: bool = False

    @property
    def key(self) -> str:
        """The canonical key of the building (street, house, building, letter, structure)."""
        return "|".join(
            (self.city, self.street_type, self.street, self.house, self.building, self.letter,
             self.structure)
        )  # fmt: skip

    @property
    def house_key(self) -> str:
        """The street name and house number only: callers often leave the rest out."""
        return f"{self.street}|{self.house}"

    def text(self, with_flat: bool = True, flat: str | None = None) -> str:
        """The address written out in one canonical way, for answers and the page
        (`flat` overrides the address's own, without copying it)."""
        if flat is not None and with_flat and flat != self.flat:
            return _with_flat(_building_text(self), flat, self.english)
        if not with_flat or not self.flat:
            return _building_text(self)  # the building's own text: remembered
        return self._written(with_flat)

    def _written(self, with_flat: bool) -> str:
        if self.english:
            out = f"{self.house}{self.letter.upper()} {self.street.title()}"  # "Main"
            out += f" {self.street_type}" if self.street_type else ""
            out += f", Bldg {self.building}" if self.building else ""
            out += f", Apt {self.flat}" if with_flat and self.flat else ""
            return out
        words = self.street.split()
        if len(words) > 1 and _ORDINAL.match(words[-1]):
            words.insert(0, words.pop())  # "1-я Парковая", as it is said
        street = " ".join(w[:1].upper() + w[1:] for w in words)
        out = f"{self.street_type}. {street}" if self.street_type else street
        out = out.replace("пр-т.", "пр-т").replace("б-р.", "б-р").replace("аллея.", "аллея")
        out = out.replace("проезд.", "проезд")
        out += f", д. {self.house}{self.letter.upper()}"
        out += f", корп. {self.building}" if self.building else ""
        out += f", стр. {self.structure}" if self.structure else ""
        out += f", кв. {self.flat}" if with_flat and self.flat else ""
        if self.city:
            out = f"г. {self.city.title()}, {out}"
        return out


# Buildings are few and callers many: each building's text is remembered, by the identity
# of its Address (the directory shares one per building; hashing all its fields on every
# call costs more than writing it out). The entry holds the Address, so the id stays its.
_building_texts: dict[int, tuple[Address, str]] = {}


def _building_text(address: Address) -> str:
    found = _building_texts.get(id(address))
    if found is not None and found[0] is address:
        return found[1]
    text = address._written(with_flat=False)
    if len(_building_texts) >= 65536:
        _building_texts.clear()
    _building_texts[id(address)] = (address, text)
    return text


def _with_flat(text: str, flat: str, english: bool) -> str:
    if not flat:
        return text
    return f"{text}, Apt {flat}" if english else f"{text}, кв. {flat}"


# "д.5" and "кв.12": a marker glued to its number.
_GLUED = re.compile(r"(?<![а-яa-z0-9])(д|дом|кв|корп|к|стр|лит|под|apt)\.?(?=\d)")
# What any such marker needs (a letter, perhaps a dot, then a digit): most text has none,
# and this finds that in a fraction of the time the marker's expression takes.
_MAYBE_GLUED = re.compile(r"[а-яa-z]\.?\d")
_LATIN = re.compile(r"[a-z]")
_DIGIT = re.compile(r"\d")
_CYRILLIC = re.compile(r"[а-я]")


def _fold(text: str) -> str:
    text = text.lower().replace("ё", "е").replace("—", "-").replace("–", "-")
    if _MAYBE_GLUED.search(text) is not None:
        text = _GLUED.sub(r"\1 ", text)
    return text


def _english(folded: str) -> bool:
    """Whether the tokens of this folded text hold a Latin letter and no Cyrillic one.
    The separators hold no letter, so the tokens hold the text's letters: the text is
    searched, in C (a loop over the tokens' characters took a tenth of a parse)."""
    return _LATIN.search(folded) is not None and _CYRILLIC.search(folded) is None


def _street_name(words: list[str]) -> str:
    """Ordinals go last in one spelling: "1-я Парковая" = "Парковая 1я" -> "парковая 1-я"."""
    joined = " ".join(words)
    if _DIGIT.search(joined) is None:  # an ordinal starts with a digit: most names have none
        return joined
    ordinals: list[str] = []
    rest: list[str] = []
    for w in words:
        m = _ORDINAL.match(w)
        if m:
            ordinals.append(f"{m.group(1)}-{_ENDINGS.get(m.group(2), m.group(2))}")
        else:
            rest.append(w)
    return " ".join(rest + ordinals)


def parse(text: str) -> Address | None:
    """Parse a written address; None when no street name and house can be found."""
    folded = _fold(text)
    tokens = [t for t in _SPLIT.split(folded) if t and t != "-"]
    english = _english(folded)
    types = _STREET_TYPES_EN if english else _STREET_TYPES_RU
    street_words: list[str] = []
    street_type = ""
    parts: dict[str, str] = {}
    city = ""
    i = 0
    n = len(tokens)
    expect: str | None = None  # the part the previous marker announced
    while i < n:
        tok = tokens[i]
        i += 1
        if expect is not None:
            if expect == "house":
                m = _COMPACT.match(tok)
                if m:
                    _take_compact(m, parts)
                else:
                    parts["house"] = tok
            elif expect == "city":
                city = tok
            else:
                parts[expect] = tok
            expect = None
            continue
        if tok in _MARKERS:  # one look-up for the street's words and numbers, not eight
            if tok in _CITY and i < n and not street_words:
                expect = "city"
                continue
            if tok in types and not street_type:
                street_type = types[tok]
                continue
            if tok in _HOUSE:
                expect = "house"
                continue
            if "house" in parts:
                if tok in _BUILDING:
                    expect = "building"
                    continue
                if tok in _STRUCTURE:
                    expect = "structure"
                    continue
                if tok in _LETTER:
                    expect = "letter"
                    continue
            if tok in _FLAT:
                expect = "flat"
                continue
            if tok in _ENTRANCE:
                expect = "entrance"
                continue
        if (
            "house" not in parts
            # Russian numbers before any street word name the street ("8 Марта"); English
            # addresses put the house number first ("12 Main St").
            and (english or street_words)
            and (m := _COMPACT.match(tok)) is not None
        ):
            _take_compact(m, parts)
        elif "house" in parts and len(tok) == 1 and tok.isalpha() and "letter" not in parts:
            parts["letter"] = tok  # "5 А"
        elif "house" in parts and tok.isdigit() and english and "flat" not in parts:
            parts["flat"] = tok
        elif "house" not in parts or english:
            street_words.append(tok)
        # anything else after the house (a stray word) is ignored rather than guessed at
    if not street_words or "house" not in parts:
        return None
    return Address(
        street=_street_name(street_words),
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


def _take_compact(m: re.Match[str], parts: dict[str, str]) -> None:
    for name, value in m.groupdict().items():  # house, letter, building, structure, flat
        if value:
            parts[name] = value


def key(text: str) -> str | None:
    """The canonical building key of an address, or None if it cannot be parsed."""
    parsed = parse(text)
    return parsed.key if parsed else None


def canonical_ip(text: str) -> str | None:
    """The canonical text of an IPv4 or IPv6 address, or None (inet_pton: fast, in C)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text.strip()))
    except (OSError, ValueError):
        return None


_NOT_DIGIT = re.compile(r"\D")


class _Phones(Protocol):
    @property
    def country_code(self) -> int: ...
    @property
    def trunk_prefix(self) -> str: ...
    @property
    def national_digits(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PhonePlan:
    """How the provider's country writes a number without its country code: the country
    calling code, the trunk prefix dialled before a national number ("8" in Russia, "0"
    in most of Europe, "1" in North America, "" for none) and the national number's
    digits. `[phones]` in the config; the default is Russia's, as before it existed."""

    country_code: str = "7"
    trunk_prefix: str = "8"
    national_digits: int = 10

    @classmethod
    def of(cls, phones: _Phones) -> PhonePlan:
        """The plan of the config's `[phones]` (country_code written as a number there)."""
        return cls(str(phones.country_code), phones.trunk_prefix, phones.national_digits)

    def normalise(self, text: str) -> str | None:
        """Any common notation to E.164 (this plan's country assumed without a code)."""
        return normalise_phone(text, self)


RUSSIA = PhonePlan()


def normalise_phone(text: str, plan: PhonePlan = RUSSIA) -> str | None:
    """Any common notation to E.164 (`plan`'s country assumed without a country code)."""
    raw = text.strip()
    plus = raw[:1] == "+"
    # The phone menu sends bare digits or +digits: no expression needed for those.
    digits = raw[1:] if plus else raw
    if not (digits.isdigit() and digits.isascii()):
        # Nor for digits in groups split by spaces (most CRM rows): a quarter of the time.
        digits = digits.replace(" ", "")
        if not (digits.isdigit() and digits.isascii()):
            # Nor for "8 (934) 325-15-26" (another quarter): four replaces cost a fifth of
            # the expression, and leave the same digits when only those marks were there.
            digits = digits.replace("-", "").replace("(", "").replace(")", "")
            if not (digits.isdigit() and digits.isascii()):
                digits = _NOT_DIGIT.sub("", raw)
    if plus:
        return f"+{digits}" if 8 <= len(digits) <= 15 else None
    national, code, trunk = plan.national_digits, plan.country_code, plan.trunk_prefix
    n = len(digits)
    if n == national:
        return f"+{code}{digits}"
    # With the trunk prefix ("8 921 ..."), or the country code without its "+" ("7 921
    # ...", "1 555 ..."): the national number follows either.
    if n == national + len(trunk) and trunk and digits.startswith(trunk):
        return f"+{code}{digits[len(trunk) :]}"
    if n == national + len(code) and digits.startswith(code):
        return f"+{digits}"
    return None
