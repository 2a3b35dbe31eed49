"""Subscribers and the way from a caller to the node that serves them (pure).

Built once per load; every lookup on the phone menu's path is a dict access or, for a
free-text address that does not match exactly, a fuzzy search over street names.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz, process

from outagemon.core import addresses
from outagemon.core.addresses import Address
from outagemon.core.topology import Node, Topology
from outagemon.errors import TopologyError, read_text

COLUMNS = ("account", "phones", "address", "flat", "ip")
FUZZY_CUTOFF = 80.0  # rapidfuzz ratio a street name must reach to count as the same street
FUZZY_CLEAR_LEAD = 8.0  # a best match this far ahead of the next wins outright


@dataclass(slots=True)
class Subscriber:
    account: str
    phones: tuple[str, ...]
    address: Address
    flat: str
    ip: str | None
    serving: str  # the topology node that brings service to the address
    row: int
    # The node whose state is this subscriber's: their router (cpe:ACCOUNT) when it is
    # probed, else the serving node. Kept rather than computed: the phone menu asks often.
    node: str = ""

    def __post_init__(self) -> None:
        if not self.node:
            self.node = cpe_id(self.account) if self.ip else self.serving

    def where(self) -> Address:
        """The address with the flat."""
        return dataclasses.replace(self.address, flat=self.flat)


def cpe_id(account: str) -> str:
    return f"cpe:{account}"


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, once a call
class Match:
    """The answer to "where is this caller": one place, several, or none (never changed
    once made)."""

    nodes: tuple[str, ...] = ()  # serving nodes (one, or several for a house split by flats)
    address: Address | None = None
    subscriber: Subscriber | None = None
    candidates: tuple[str, ...] = ()  # for an ambiguous answer: the addresses written out
    flat: str = ""

    def address_text(self) -> str:
        """The caller's address as normalised, with the flat."""
        if self.address is None:
            return ""
        return self.address.text(flat=self.flat)

    @property
    def found(self) -> bool:
        return bool(self.nodes)

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


NOT_FOUND = Match()


def _one(sub: Subscriber | None) -> Match:
    """The place of one subscriber (made positionally: the phone menu asks thousands of
    times a second in a surge)."""
    if sub is None:
        return NOT_FOUND
    return Match((sub.node,), sub.address, sub, (), sub.flat)


def _flat_number(flat: str) -> int | None:
    return int(flat) if flat.isdigit() else None


class Directory:
    """The topology with its subscribers, indexed for the phone menu's questions."""

    def __init__(self, topology: Topology, subscribers: list[Subscriber]) -> None:
        self.topology = topology
        self.subscribers = subscribers
        self.by_account: dict[str, Subscriber] = {}
        # One phone usually has one account: store the subscriber itself, a list only
        # for the few that share a number (saves ~60 bytes a subscriber at a million).
        self.by_phone: dict[str, Subscriber | list[Subscriber]] = {}
        self.counts: dict[str, int] = {}  # node -> subscribers it serves directly
        for sub in subscribers:
            self.by_account[sub.account] = sub
            for phone in sub.phones:
                present = self.by_phone.get(phone)
                if present is None:
                    self.by_phone[phone] = sub
                elif isinstance(present, list):
                    present.append(sub)
                else:
                    self.by_phone[phone] = [present, sub]
            self.counts[sub.serving] = self.counts.get(sub.serving, 0) + 1
        self.streets: dict[str, list[str]] = {}  # street name -> building keys on it
        for address in topology.buildings():
            self.streets.setdefault(address.street, []).append(address.key)
        self._street_names = list(self.streets)

    # -- phone, account --------------------------------------------------------------

    def phone(self, text: str) -> Match:
        phone = addresses.normalise_phone(text)
        found = self.by_phone.get(phone) if phone else None
        if isinstance(found, list):  # a number several accounts give
            if len({(s.address.key, s.flat) for s in found}) > 1:
                return Match(candidates=tuple(sorted({s.where().text() for s in found})))
            return _one(found[0])
        return _one(found)

    def account(self, text: str) -> Match:
        return _one(self.by_account.get(text.strip()))

    # -- free-text address -----------------------------------------------------------

    def address(self, text: str, flat: str = "") -> Match:
        query = addresses.parse(text)
        if query is None:
            return NOT_FOUND
        flat = flat.strip() or query.flat
        keys = self.topology.matching(query)
        if not keys:
            keys = self._fuzzy(query)
        if not keys:
            return NOT_FOUND
        if len(keys) > 1:
            found = [self.topology.served[k][0][0].address.text() for k in keys]
            return Match(candidates=tuple(sorted(found)))
        key = keys[0]
        building = self.topology.served[key][0][0].address
        nodes = self.topology.serving(building, _flat_number(flat))
        return Match(nodes=tuple(nodes), address=building, flat=flat)

    def _fuzzy(self, query: Address) -> list[str]:
        scored = process.extract(
            query.street, self._street_names, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF, limit=5
        )
        with_house: list[tuple[float, list[str]]] = []
        for street, score, _ in scored:
            keys = self.topology.matching(dataclasses.replace(query, street=street))
            if keys:
                with_house.append((score, keys))
        if not with_house:
            return []
        with_house.sort(key=lambda item: -item[0])
        best_score, best = with_house[0]
        if len(with_house) == 1 or best_score - with_house[1][0] >= FUZZY_CLEAR_LEAD:
            return best
        return sorted({k for score, keys in with_house if best_score - score < FUZZY_CLEAR_LEAD
                       for k in keys})  # fmt: skip


# -- loading ---------------------------------------------------------------------------


def parse_csv(text: str, path: Path, topology: Topology) -> tuple[list[Subscriber], list[str]]:
    """Subscribers from the CSV text, and a sentence for each row that could not be used."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        return [], [f"{path}: the header lacks column(s) {', '.join(missing)}; "
                    f"it must name {','.join(COLUMNS)}."]  # fmt: skip
    problems: list[str] = []
    subscribers: list[Subscriber] = []
    accounts: dict[str, int] = {}
    ips: dict[str, str] = dict(topology.by_ip)
    parsed_cache: dict[str, Address | None] = {}
    at = [header.index(c) for c in COLUMNS]
    width = max(at) + 1
    for row_number, fields in enumerate(reader, start=2):
        where = f"{path}: row {row_number}"
        if len(fields) < width:
            if fields:
                problems.append(f"{where}: has {len(fields)} fields, the header {len(header)}.")
            continue
        account, raw_phones, raw_address, raw_flat, raw_ip = (fields[i].strip() for i in at)
        if not account:
            problems.append(f"{where}: account is empty.")
            continue
        if account in accounts:
            problems.append(f"{where}: account {account!r} is already on row {accounts[account]}.")
            continue
        phones: list[str] = []
        for raw_phone in raw_phones.split(";"):
            if not raw_phone.strip():
                continue
            phone = addresses.normalise_phone(raw_phone)
            if phone is None:
                problems.append(f"{where}: phones: {raw_phone.strip()!r} is not a phone number.")
            else:
                phones.append(phone)
        if raw_address not in parsed_cache:
            parsed_cache[raw_address] = addresses.parse(raw_address)
        address = parsed_cache[raw_address]
        if address is None:
            problems.append(f"{where}: address {raw_address!r} has no street and house number.")
            continue
        flat = raw_flat or address.flat
        ip: str | None = None
        if raw_ip:
            ip = addresses.canonical_ip(raw_ip)
            if ip is None:
                problems.append(f"{where}: ip {raw_ip!r} is not an IP address.")
                continue
            if ip in ips:
                problems.append(f"{where}: ip {ip} is already used by {ips[ip]!r}.")
                continue
        # The CRM is the provider's own record: an exact building wins; a caller saying
        # "Ленина 5" is asked which of 5, 5к1, 5к2 they mean, the export is not.
        keys = [address.key] if address.key in topology.served else topology.matching(address)
        if len(keys) > 1:
            problems.append(
                f"{where}: address {raw_address!r} could be any of "
                f"{'; '.join(topology.served[k][0][0].address.text() for k in keys)}."
            )
            continue
        served = topology.served[keys[0]][0][0].address if keys else address
        nodes = topology.serving(served, _flat_number(flat))
        if not nodes:
            problems.append(
                f"{where}: address {address.text(with_flat=False)!r}"
                f"{f' flat {flat}' if flat else ''} is served by no node in the topology."
            )
            continue
        if len(nodes) > 1:
            problems.append(
                f"{where}: address {address.text(with_flat=False)!r} is split between "
                f"{', '.join(nodes)} by flat; give the flat."
            )
            continue
        accounts[account] = row_number
        if ip is not None:
            ips[ip] = cpe_id(account)
        subscribers.append(
            Subscriber(account, tuple(phones), served, flat, ip, nodes[0], row_number)
        )
    return subscribers, problems


def with_cpes(topology: Topology, subscribers: list[Subscriber]) -> Topology:
    """The topology plus a probed `cpe` node under the serving node of each subscriber with ip."""
    nodes = list(topology.nodes.values())
    for sub in subscribers:
        if sub.ip:
            nodes.append(
                Node(
                    id=sub.node,  # the same string: one copy for a million routers
                    kind="cpe",
                    ip=sub.ip,
                    parents=(sub.serving,),
                    name=sub.account,
                    line=sub.row,
                )
            )
    return Topology(nodes)


@dataclass(frozen=True, slots=True)
class Loaded:
    directory: Directory
    problems: list[str]  # subscriber rows that were left out, each with its reason


def load(topology_path: Path, subscribers_path: Path | None) -> Loaded:
    """Read both files; TopologyError for a broken topology, row problems returned."""
    from outagemon.core import topology as topology_mod

    topo = topology_mod.load(topology_path)
    if subscribers_path is None:
        return Loaded(Directory(topo, []), [])
    # utf-8-sig: CRM exports often start with a byte-order mark
    text = read_text(subscribers_path, TopologyError, encoding="utf-8-sig")
    subs, problems = parse_csv(text, subscribers_path, topo)
    return Loaded(Directory(with_cpes(topo, subs), subs), problems)
