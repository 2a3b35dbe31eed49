"""Synthetic cities for tests, benchmarks, the lab and the demo.

A core router, aggregation switches, access switches each serving one building, entrance
segments without IP that split a building's flats, and subscribers with Russian
addresses, phones and CPE addresses in 127.0.0.0/8 (so a lab can really ping them).
It is simulated data, said so wherever it is used: no provider's real network is in it.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STREETS = [
    "Ленина", "Мира", "Советская", "Гагарина", "Пушкина", "Садовая", "Лесная", "Школьная",
    "Молодёжная", "Центральная", "Набережная", "Заводская", "Новая", "Полевая", "Строителей",
    "Кирова", "Чехова", "Лермонтова", "Горького", "Комсомольская", "Октябрьская", "Победы",
    "Рабочая", "Пролетарская", "Первомайская", "Московская", "Зелёная", "Солнечная",
    "Речная", "Луговая", "Весенняя", "Южная", "Северная", "Жукова", "Маяковского",
    "Суворова", "Кутузова", "Чапаева", "Фрунзе", "Свердлова", "Калинина", "Дзержинского",
    "Тургенева", "Толстого", "Некрасова", "Гоголя", "Белинского", "Декабристов",
    "Энтузиастов", "Космонавтов", "Юбилейная", "Вокзальная", "Парковая", "Озёрная",
    "Сосновая", "Берёзовая", "Кленовая", "Рябиновая", "Дачная", "Луначарского",
]  # fmt: skip
KINDS = ["ул.", "пр-т", "пер.", "б-р"]
ORDINALS = ["1-я", "2-я", "3-я"]


def ip_of(n: int) -> str:
    """The n-th usable address in 127.0.0.0/8, skipping 127.0.0.x (the host's own)."""
    n += 256
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


@dataclass
class City:
    nodes: list[dict[str, object]] = field(default_factory=list)
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # CSV rows

    def topology_yaml(self) -> str:
        return yaml.safe_dump({"nodes": self.nodes}, allow_unicode=True, sort_keys=False)

    def subscribers_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["account", "phones", "address", "flat", "ip"])
        writer.writerows(self.rows)
        return out.getvalue()

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        topo = directory / "topology.yaml"
        subs = directory / "subscribers.csv"
        topo.write_text(self.topology_yaml(), encoding="utf-8")
        subs.write_text(self.subscribers_csv(), encoding="utf-8")
        return topo, subs


def _buildings(count: int, rng: random.Random) -> list[str]:
    """`count` distinct building addresses, written the many ways CRMs write them."""
    streets = [f"{k} {s}" for s in STREETS for k in KINDS]
    streets += [f"ул. {o} {s}" for s in STREETS[:10] for o in ORDINALS]
    rng.shuffle(streets)
    houses_per_street = max(1, -(-count // len(streets)))
    out: list[str] = []
    for street in streets:
        for house in range(1, houses_per_street + 1):
            if len(out) == count:
                return out
            suffix = ""
            roll = rng.random()
            if roll < 0.15:
                suffix = f" корп. {rng.randint(1, 3)}"
            elif roll < 0.2:
                suffix = rng.choice(["А", "Б"])
            out.append(f"{street}, д. {house}{suffix}")
    return out


def generate(
    aggregations: int = 4,
    access_per_aggregation: int = 10,
    subscribers_per_access: int = 10,
    entrances: int = 2,
    flats_per_entrance: int = 36,
    cpe_share: float = 1.0,
    seed: int = 1,
) -> City:
    """A city; every node with an ip, and every CPE, has a distinct 127.0.0.0/8 address."""
    rng = random.Random(seed)
    city = City()
    next_ip = 0

    def take_ip() -> str:
        nonlocal next_ip
        next_ip += 1
        return ip_of(next_ip)

    city.nodes.append({"id": "core-1", "kind": "core", "ip": take_ip(), "parents": [],
                       "name": "Core router"})  # fmt: skip
    buildings = _buildings(aggregations * access_per_aggregation, rng)
    phones: set[str] = set()
    account = 100000
    b = 0
    for a in range(1, aggregations + 1):
        agg = f"agg-{a}"
        city.nodes.append({"id": agg, "kind": "aggregation", "ip": take_ip(),
                           "parents": ["core-1"], "name": f"Aggregation {a}"})  # fmt: skip
        for s in range(1, access_per_aggregation + 1):
            address = buildings[b]
            b += 1
            sw = f"sw-{a}-{s}"
            node: dict[str, object] = {
                "id": sw, "kind": "access", "ip": take_ip(), "parents": [agg],
                "name": f"Access switch, {address}",
            }  # fmt: skip
            if entrances <= 1:
                node["serves"] = [address]
            city.nodes.append(node)
            for e in range(1, entrances + 1 if entrances > 1 else 1):
                lo = (e - 1) * flats_per_entrance + 1
                flats = f"{lo}-{lo + flats_per_entrance - 1}"
                city.nodes.append({
                    "id": f"seg-{a}-{s}-{e}", "kind": "segment", "parents": [sw],
                    "name": f"Entrance {e}, {address}",
                    "serves": [{"address": address, "flats": flats}],
                })  # fmt: skip
            total_flats = flats_per_entrance * max(1, entrances)
            taken = rng.sample(range(1, total_flats + 1), min(subscribers_per_access, total_flats))
            for flat in taken:
                account += 1
                while True:
                    phone = f"+79{rng.randint(0, 999_999_999):09d}"
                    if phone not in phones:
                        phones.add(phone)
                        break
                written = _write_phone(phone, rng)
                ip = take_ip() if rng.random() < cpe_share else ""
                city.rows.append((str(account), written, address, str(flat), ip))
    return city


def sized(access: int, subscribers: int, seed: int = 1) -> City:
    """A city of about `access` access switches (100 to an aggregation) and `subscribers`
    subscribers, each building split into four entrances with room for them all."""
    aggregations = max(1, access // 100)
    per_access = -(-subscribers // access)
    return generate(
        aggregations=aggregations,
        access_per_aggregation=access // aggregations,
        subscribers_per_access=per_access,
        entrances=4,
        flats_per_entrance=-(-per_access // 4) + 10,
        seed=seed,
    )


def _write_phone(phone: str, rng: random.Random) -> str:
    d = phone[2:]
    return rng.choice([
        phone,
        f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}",
        f"+7 {d[:3]} {d[3:]}",
        f"7{d}",
    ])  # fmt: skip
