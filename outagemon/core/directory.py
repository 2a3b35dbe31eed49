"""Subscribers and the way from a caller to the node that serves them (pure).

Built once per load. A city has a million subscribers, so they are held in columns
(`Roster`): each text column is one string with an array of end offsets, the numbers
are arrays, and phone and account numbers are found through sorted arrays of hashes. A
few dozen objects instead of several million: loading makes few Python objects, the
garbage collector has nothing to walk, and processes forked after loading share the
pages, because a lookup writes no reference count into them but those of the few objects
it reads. A subscriber (`Subscriber`) is made when a lookup returns one. A free-text
address is a dict access, or a fuzzy search over street names when it does not match
exactly.
"""

from __future__ import annotations

import bisect
import csv
import ctypes
import dataclasses
import functools
import gc
import io
import math
import re
import socket
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, count, islice, repeat, tee
from operator import add, and_, attrgetter, eq, getitem, gt, is_, lt, mul, ne, sub
from pathlib import Path
from typing import Any, TypeVar, cast, overload

from rapidfuzz import fuzz, process

from outagemon.core import addresses
from outagemon.core.addresses import RUSSIA, Address, PhonePlan, normalise_phone
from outagemon.core.text import bad_character
from outagemon.core.topology import NO_LABELS, Node, Topology
from outagemon.errors import TopologyError, not_utf8

COLUMNS = ("account", "phones", "address", "flat", "ip")
FUZZY_CUTOFF = 80.0  # rapidfuzz ratio a street name must reach to count as the same street
FUZZY_CLEAR_LEAD = 8.0  # a best match this far ahead of the next wins outright
# Bytes read from the subscriber file at a time (see _read_file), each decoded in one
# call into C: a MiB of utf-8-sig took 2-3 ms thread CPU (load 3), 8-13 ms beside a
# reload's loop under load; a quarter MiB 0.2-0.4 ms, the file's decoding no slower.
READ_BUFFER = 1 << 18
CHUNK_ROWS = 2_000  # CSV rows read and turned into columns at a time: each chunk is read,
# and searched for bad characters, in one call into C (20,000 rows: up to 25 ms, the event
# loop held beside a reload's thread; the load as fast, 2,000 or 20,000)
PIECE_ROWS = 500  # of a chunk's rows parsed by the csv module in one call (see _chunk)


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
    # probed, else the serving node.
    node: str = ""

    def __post_init__(self) -> None:
        if not self.node:
            self.node = cpe_id(self.account) if self.ip else self.serving

    def where(self) -> Address:
        """The address with the flat."""
        return dataclasses.replace(self.address, flat=self.flat)


def cpe_id(account: str) -> str:
    return f"cpe:{account}"


# -- columns ---------------------------------------------------------------------------


# Strings in each of a Column's texts: ~1-1.5 MiB of a million-entry column's text, made
# by one call into C (~1-2 ms), in pages of its own (see map_large_blocks). Texts of
# 16,384 strings (~200 KiB) lay inside the heap, which the load's later allocations then
# grew around: its peak 28 MiB higher. A forked process that reads a text writes into one
# page of it (its count of references).
_SHIFT = 17
_SPAN = 1 << _SHIFT
_IN_SPAN = _SPAN - 1


class Column:
    """Strings kept as texts of _SPAN strings each (the last fewer) and the end offset of
    each string in its text: 8 objects for a million (offsets are 32-bit). One text for
    the whole column was made by one call into C copying 4-12 MiB into new memory, the
    interpreter's lock held, and a reload's event loop beside it, for up to 20 ms."""

    __slots__ = ("ends", "texts")

    def __init__(self, texts: list[str] | None = None, ends: array[int] | None = None) -> None:
        self.texts: list[str] = texts if texts is not None else []
        self.ends: array[int] = ends if ends is not None else array("I")

    @classmethod
    def of(cls, values: Iterable[str]) -> Column:
        builder, values = _ColumnBuilder(), iter(values)
        while part := list(islice(values, _SPAN)):
            builder.extend(part)
        return builder.done()

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        ends = self.ends
        return self.texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]


_N = TypeVar("_N", int, float)


class _ColumnBuilder:
    """A Column made a chunk at a time: each chunk's strings joined as they come (and
    let go of), the chunks' texts joined again _SPAN strings at a time, their offsets
    arrays."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ends: list[array[int]] = []
        self.parts: list[str] = []  # the next text's, so far
        self.size = 0  # characters in parts
        self.taken = 0  # strings in parts

    def extend(self, values: list[str]) -> None:
        at = 0
        while at < len(values):
            part = values[at : at + _SPAN - self.taken]  # up to the next text's edge
            at += len(part)
            self.parts.append("".join(part))
            self.ends.append(array("I", islice(accumulate(map(len, part), initial=self.size),
                                               1, None)))  # fmt: skip
            self.size += len(self.parts[-1])
            self.taken += len(part)
            if self.taken == _SPAN:
                self._text()

    def _text(self) -> None:
        self.texts.append("".join(self.parts))
        self.parts, self.size, self.taken = [], 0, 0

    def done(self) -> Column:
        if self.parts:
            self._text()
        return Column(self.texts, _joined(self.ends, "I"))


def _joined(parts: Sequence[array[_N]], typecode: str) -> array[_N]:
    """The parts in one array, a part at a time (see _started)."""
    out: array[_N] = _started(typecode, sum(map(len, parts)))
    at = 0
    for part in parts:
        _put(out, at, part)
        at += len(part)
    return out


def _started(typecode: str, size: int) -> array[Any]:
    """An array to be filled by _put with `size` entries: made at LARGE_BLOCK (or `size`)
    now, to grow from there by extend(). Made at its full size at once, its 4-8 MiB of new
    pages were faulted in by one call into C, the interpreter's lock held, and a reload's
    event loop beside it, for 3-8 ms. From LARGE_BLOCK on it has pages of its own and grows
    by mremap(), without a copy (see map_large_blocks, which every load calls first), its
    new pages faulted a part at a time; below, it would be copied inside the heap at each
    sixteenth of its size."""
    zero = array(typecode, [0])
    return zero * min(size, LARGE_BLOCK // zero.itemsize)


def _put(out: array[_N], at: int, part: array[_N]) -> None:
    """`part` written into `out` from `at` (at most its length), `out` grown past its end."""
    room = len(out) - at
    if room >= len(part):
        out[at : at + len(part)] = part
        return
    if room > 0:
        out[at:] = part[:room]
        part = part[room:]
    out.extend(part)


_SLOT_BITS = 21  # an entry's position in the packed key: up to 2,097,152 positions
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_HASH_MASK = 0xFFFFFFFF
_SLOT_SCALE = float(1 << _SLOT_BITS)
_NEAR = 64  # keys a bucket's start is first looked for among (see HashIndex.bucketed)


class HashIndex:
    """Positions by text, in one sorted array: each entry is the text's 32-bit hash and
    its position packed into a float's 53 exact bits (floats sort in C at memory speed;
    a dict of a million strings costs ~100 bytes an entry). A hit is checked against the
    real text by the caller; equal hashes sit side by side, in position order.

    `hash()` of a str differs between interpreters, so an index is used only in the
    process that built it and the processes forked from it (`Roster` rebuilds its indexes
    when it is unpickled elsewhere)."""

    __slots__ = ("hashes", "keys", "shift", "slots", "starts")

    def __init__(self, texts: Iterable[str], slots: Iterable[int], limit: int) -> None:
        """`slots`: each text's position, all below `limit`."""
        self.keys: array[float] = array("d")
        self.hashes: array[int] = array("q")
        self.slots: array[int] = array("I")
        self.starts: array[int] = array("I")  # see `bucketed`
        self.shift = 32
        if limit > _SLOT_MASK:  # more positions than the packing holds: slower, exact
            pairs = sorted(zip(map(hash, texts), slots, strict=True))
            self.hashes.extend(h for h, _ in pairs)
            self.slots.extend(p for _, p in pairs)
            return
        self.keys = _sorted_keys(iter(texts), iter(slots))

    def bucketed(self) -> HashIndex:
        """The index with where each bucket of hashes (their top bits) starts in the keys:
        a lookup bisects its bucket (~8 keys, one or two cache lines) instead of the whole
        array (a million keys: ~20 steps, the last ten each a miss of the cache). The
        lookups' indexes only: 4 bytes a bucket, 512 KiB at a million keys."""
        keys = self.keys
        if not keys:  # the unpacked index: searched whole
            return self
        bits = min(32, (len(keys) // 8).bit_length())
        self.shift = shift = 32 - bits
        starts = array("I")
        at, end = 0, len(keys)
        for bucket in range(1 << bits):  # a call each: the event loop is not held
            # Within the next _NEAR keys first (a bucket holds ~8): a few steps, not ~20,
            # each making a float of the array's.
            bound = float(bucket << shift << _SLOT_BITS)
            near = min(at + _NEAR, end)
            at = bisect_left(keys, bound, at, near)
            if at == near:
                at = bisect_left(keys, bound, at)
            starts.append(at)
        starts.append(end)
        self.starts = starts
        return self

    def candidates(self, text: str) -> Iterator[int]:
        """Positions whose text may be `text` (each to be checked), in position order."""
        if self.hashes:
            hashes, h = self.hashes, hash(text)
            i = bisect.bisect_left(hashes, h)
            while i < len(hashes) and hashes[i] == h:
                yield self.slots[i]
                i += 1
            return
        keys = self.keys
        h = hash(text) & _HASH_MASK
        i = bisect.bisect_left(keys, float(h << _SLOT_BITS))
        end = len(keys)
        while i < end:
            k = int(keys[i])
            if k >> _SLOT_BITS != h:
                return
            yield k & _SLOT_MASK
            i += 1

    def collisions(self) -> list[int]:
        """Positions sharing a hash with another (where duplicates can be; few)."""
        if self.hashes:
            top: Sequence[int] = self.hashes
            at: Sequence[int] | _Slots = self.slots
            same: Iterable[int] = compress(count(1), map(eq, islice(top, 1, None), top))
        else:
            # Keys of one hash differ by less than 2**21 (their slots): neighbours that
            # close, a run at a time in C (see _sorted_keys), then their hashes compared
            # (a hash and the next one up can be that close too).
            keys = self.keys
            close: list[int] = []
            for i in range(0, len(keys), _RUN):
                part = keys[i : i + _RUN + 1]
                gaps = map(sub, islice(part, 1, None), part)
                close += compress(count(i + 1), map(lt, gaps, repeat(_SLOT_SCALE)))
            same = [
                i for i in close if int(keys[i - 1]) >> _SLOT_BITS == int(keys[i]) >> _SLOT_BITS
            ]
            at = _Slots(keys)
        return sorted({at[j] for i in same for j in (i - 1, i)})


_RUN = 4_096  # entries a single call into C takes at most, where it can be cut


def _sorted_keys(texts: Iterator[str], slots: Iterator[int]) -> array[float]:
    """The packed keys, sorted: in runs of _RUN, then merged (see _merged). A reload builds
    the directory in a thread, and one call into C holds the interpreter's lock, and the
    event loop, throughout: sorted() of a million keys held it for half a second, the
    last merge of two runs for 50 ms."""
    runs: list[Sequence[float]] = []
    while True:
        # One chain of C a run, each text made and dropped in turn (a list of the run's
        # texts beside its floats left the allocator's arenas fragmented: 16 MiB more).
        run = sorted(_packed(islice(texts, _RUN), islice(slots, _RUN)))
        if not run:
            break
        runs.append(run)
    return _merged(runs)


def _packed(texts: Iterable[str], slots: Iterable[int]) -> Iterator[float]:
    """Each text's key: its hash times 2**21 plus its slot, in floats (exact below 2**53):
    the same keys as float(hash << 21 | slot), by three steps a key instead of four."""
    hashes = map(and_, map(hash, texts), repeat(_HASH_MASK))
    return map(add, map(mul, hashes, repeat(_SLOT_SCALE)), slots)


def _merged(runs: list[Sequence[float]]) -> array[float]:
    """Sorted runs of keys in one sorted array, a range of keys at a time (the keys are
    hashes, spread evenly: each range takes its part of every run, found by bisection,
    and sorts about _RUN keys); the runs are emptied."""
    total = sum(map(len, runs))
    keys: array[float] = _started("d", total)
    at = 0
    parts = max(1, total // _RUN)
    top = float((_HASH_MASK + 1) << _SLOT_BITS)  # above every key
    starts = [0] * len(runs)
    for part in range(1, parts + 1):
        bound = top * part / parts if part < parts else math.inf
        piece: list[float] = []
        for r, run in enumerate(runs):
            end = bisect.bisect_left(run, bound, starts[r])
            piece += run[starts[r] : end]
            starts[r] = end
        piece.sort()
        _put(keys, at, array("d", piece))  # a piece at a time: see _started
        at += len(piece)
    while runs:  # a run freed at a time: the million floats freed at once took 30 ms
        runs.pop()
    return keys


class _Keys:
    """A packed HashIndex's keys gathered a chunk of the file at a time, while its texts
    exist: each hashed where it was read, not cut again out of its column (a million
    strings made and hashed once more, each index); sorted in runs of _RUN or more, each
    kept as an array (8 bytes a key, not a float object's 32)."""

    def __init__(self) -> None:
        self.runs: list[Sequence[float]] = []
        self.pending: list[float] = []
        self.taken = 0  # keys added

    def add(self, texts: Iterable[str], slots: Iterable[int]) -> None:
        before = len(self.pending)
        self.pending += _packed(texts, slots)
        self.taken += len(self.pending) - before
        if len(self.pending) >= _RUN:
            self._flush()

    def _flush(self) -> None:
        self.pending.sort()
        self.runs.append(array("d", self.pending))
        self.pending = []

    def index(self) -> HashIndex:
        """The index of every text added (their slots below 2**21: see HashIndex)."""
        if self.pending:
            self._flush()
        index = HashIndex((), (), 0)
        index.keys = _merged(self.runs)
        return index


class _Slots:
    """The positions packed in a HashIndex's keys, read one at a time."""

    def __init__(self, keys: array[float]) -> None:
        self.keys = keys

    def __getitem__(self, i: int) -> int:
        return int(self.keys[i]) & _SLOT_MASK


class Roster(Sequence[Subscriber]):
    """The subscribers, column by column (see the module's text); `roster[i]` makes the
    i-th as a Subscriber."""

    def __init__(
        self,
        accounts: Column,
        phones: Column,  # each subscriber's numbers, E.164, joined by ";"
        flats: Column,
        ips: Column,  # "" for a subscriber without a probed router
        rows: array[int],
        place: array[int],  # index into places
        places: list[tuple[str, Address]],  # (serving node, building)
        indexes: tuple[HashIndex, HashIndex] | None = None,  # by account, by phone (made
        # as the file was read: see _Keys); None: made here
    ) -> None:
        self.accounts, self.phones, self.flats, self.ips = accounts, phones, flats, ips
        self.rows, self.place, self.places = rows, place, places
        if indexes is None:
            self._index()
        else:
            self._by_account, self._by_phone = (index.bucketed() for index in indexes)
            self._seed = hash(_SEED)

    def _index(self) -> None:
        n = len(self)
        self._by_account = HashIndex(_texts(self.accounts), range(n), n).bucketed()
        phones = self.phones
        # Several numbers for some: one entry per number.
        if any(";" in text for text in phones.texts):
            numbers: list[str] = []
            owners: list[int] = []
            for i, written in enumerate(_texts(phones)):
                for p in written.split(";"):
                    if p:
                        numbers.append(p)
                        owners.append(i)
            self._by_phone = HashIndex(numbers, owners, n).bucketed()
        else:
            self._by_phone = HashIndex(_texts(phones), range(n), n).bucketed()
        self._seed = hash(_SEED)

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_by_account", "_by_phone")} | {
            "_indexes": (self._by_account, self._by_phone)
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        indexes = state.pop("_indexes")
        self.__dict__.update(state)
        if self._seed == hash(_SEED):  # same hashes (forked): the indexes hold
            self._by_account, self._by_phone = indexes  # type: ignore[misc]
        else:
            self._index()

    @classmethod
    def of(cls, subscribers: Iterable[Subscriber]) -> Roster:
        """Columns from Subscriber objects (tests, the simulator)."""
        subs = list(subscribers)
        places: dict[tuple[str, Address], int] = {}
        place = array("I")
        for s in subs:
            place.append(places.setdefault((s.serving, s.address), len(places)))
        return cls(
            Column.of(s.account for s in subs),
            Column.of(";".join(s.phones) for s in subs),
            Column.of(s.flat for s in subs),
            Column.of(s.ip or "" for s in subs),
            array("I", (s.row for s in subs)),
            place,
            list(places),
        )

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Subscriber: ...
    @overload
    def __getitem__(self, i: slice) -> list[Subscriber]: ...
    def __getitem__(self, i: int | slice) -> Subscriber | list[Subscriber]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.at(i)

    def at(self, i: int) -> Subscriber:
        """The i-th subscriber (0 <= i < len): the columns read inline, without a call
        each (the phone menu's lookups make one a question)."""
        serving, address = self.places[self.place[i]]
        column = self.accounts
        ends = column.ends
        account = column.texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]
        column = self.phones
        ends = column.ends
        phones = column.texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]
        column = self.flats
        ends = column.ends
        flat = column.texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]
        column = self.ips
        ends = column.ends
        ip = column.texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]
        if ip:
            return Subscriber(account, tuple(phones.split(";")) if phones else (), address,
                              flat, ip, serving, self.rows[i], "cpe:" + account)  # fmt: skip
        return Subscriber(account, tuple(phones.split(";")) if phones else (), address, flat,
                          None, serving, self.rows[i], serving)  # fmt: skip

    def __iter__(self) -> Iterator[Subscriber]:
        for i in range(len(self)):
            yield self[i]

    def serving(self, i: int) -> str:
        return self.places[self.place[i]][0]

    def records(self) -> Iterator[tuple[str, list[str], Address, str, str | None, str]]:
        """(account, phones, building, flat, ip, node) of each, in order, without making
        a Subscriber each (the inventory's million rows)."""
        places = self.places
        for account, phones, flat, ip, p in zip(_texts(self.accounts), _texts(self.phones),
                                                _texts(self.flats), _texts(self.ips), self.place,
                                                strict=True):  # fmt: skip
            serving, building = places[p]
            yield (account, phones.split(";") if phones else [], building, flat, ip or None,
                   cpe_id(account) if ip else serving)  # fmt: skip

    def node(self, i: int) -> str:
        """The node whose state is the i-th subscriber's (see Subscriber.node)."""
        return cpe_id(self.accounts[i]) if self.ips[i] else self.serving(i)

    def by_account(self, account: str) -> int | None:
        index = self._by_account
        keys = index.keys
        if not keys:  # the unpacked index (more positions than the packing holds)
            accounts = self.accounts
            for i in index.candidates(account):
                if accounts[i] == account:
                    return i
            return None
        # HashIndex.candidates and Column.__getitem__, inline (a generator and a call
        # a candidate cost more than the rest of the search), in the hash's bucket.
        h = hash(account) & _HASH_MASK
        bucket = h >> index.shift
        end = index.starts[bucket + 1]
        at = bisect_left(keys, float(h << _SLOT_BITS), index.starts[bucket], end)
        texts, ends = self.accounts.texts, self.accounts.ends
        while at < end:
            k = int(keys[at])
            if k >> _SLOT_BITS != h:
                return None
            i = k & _SLOT_MASK
            if texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]] == account:
                return i
            at += 1
        return None

    def by_phone(self, phone: str) -> list[int]:
        """Every subscriber giving this number (E.164), in load order."""
        out: list[int] = []
        index = self._by_phone
        keys = index.keys
        if not keys:  # the unpacked index (more positions than the packing holds)
            phones = self.phones
            for i in index.candidates(phone):
                found = phones[i]
                if found == phone or phone in found.split(";"):
                    out.append(i)
            return out
        # As by_account: the search inline, in the hash's bucket.
        h = hash(phone) & _HASH_MASK
        bucket = h >> index.shift
        end = index.starts[bucket + 1]
        at = bisect_left(keys, float(h << _SLOT_BITS), index.starts[bucket], end)
        texts, ends = self.phones.texts, self.phones.ends
        while at < end:
            k = int(keys[at])
            if k >> _SLOT_BITS != h:
                break
            i = k & _SLOT_MASK
            found = texts[i >> _SHIFT][ends[i - 1] if i & _IN_SPAN else 0 : ends[i]]
            if found == phone or phone in found.split(";"):
                out.append(i)
            at += 1
        return out

    def counts(self) -> dict[str, int]:
        """Serving node -> subscribers it serves directly."""
        out: dict[str, int] = {}
        counted: Counter[int] = Counter()
        place = self.place
        for i in range(0, len(place), _RUN):  # a run at a time: see _sorted_keys
            counted.update(place[i : i + _RUN])
        for p, n in counted.items():
            serving = self.places[p][0]
            out[serving] = out.get(serving, 0) + n
        return out

    def without(self, drop: set[int]) -> Roster:
        """The roster less some subscribers (positions)."""
        keep = [i for i in range(len(self)) if i not in drop]
        return Roster(
            Column.of(_texts(self.accounts, keep)),
            Column.of(_texts(self.phones, keep)),
            Column.of(_texts(self.flats, keep)),
            Column.of(_texts(self.ips, keep)),
            array("I", map(self.rows.__getitem__, keep)),
            array("I", map(self.place.__getitem__, keep)),
            self.places,
        )

    _seed: int
    _by_account: HashIndex
    _by_phone: HashIndex


_SEED = "outagemon.directory"


def _texts(column: Column, positions: Iterable[int] | None = None) -> Iterator[str]:
    """The column's strings in order (or those at `positions`), one at a time."""
    if positions is None:
        return chain.from_iterable(map(_strings, column.texts, _spans(column.ends)))
    return map(column.__getitem__, positions)


def _spans(ends: array[int]) -> Iterator[array[int]]:
    """The ends of each of a Column's texts (see Column)."""
    return (ends[i : i + _SPAN] for i in range(0, len(ends), _SPAN))


def _strings(text: str, ends: array[int]) -> Iterator[str]:
    """The strings of one of a Column's texts, by their ends in it."""
    return map(text.__getitem__, map(slice, chain((0,), ends), ends))


def _filled(column: Column) -> list[int]:
    """Positions of the column's non-empty strings."""
    ends = column.ends
    filled: list[int] = []
    for i in range(0, len(ends), _RUN):  # a run at a time (see _sorted_keys): _RUN divides _SPAN
        part = ends[i : i + _RUN]
        before = ends[i - 1] if i & _IN_SPAN else 0  # a text's ends start from 0
        filled += compress(range(i, i + len(part)), map(ne, part, chain((before,), part)))
    return filled


# -- the phone menu's questions -----------------------------------------------------------


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


_WRITTEN_KEPT = 4096  # written addresses a directory remembers the meaning of (~2 MiB at most)


def flat_key(flat: str) -> str:
    """A flat as one home: "012", "12" and " 12 " are flat 12; "12А" and "12а" one flat."""
    flat = flat.strip()
    if flat.isascii() and flat.isdigit():
        return str(int(flat))
    return flat.casefold()


# What a flat is written as when it is one: a number (at most six digits), perhaps with a
# letter or a part after it ("12", "012", "12а", "12 А", "12/1", "12-2", "12к1").
_FLAT = re.compile(r"[0-9]{1,6}(?:[ /-][0-9a-zа-яё]{1,3}|[a-zа-яё][0-9a-zа-яё]{0,2})?",
                   re.IGNORECASE)  # fmt: skip


def is_flat(flat: str) -> bool:
    """Whether a flat as asked about is written as a flat ("12", "12а", "12/1"): anything
    else is a flat only where the subscribers' file has one so named (`Directory.has_flat`)."""
    return _FLAT.fullmatch(flat.strip()) is not None


def _number_of(flat: str) -> int | None:
    """The number of a flat written with a letter or part ("12а", "12/1": 12), as the
    flats' ranges place it; None for no flat."""
    flat = flat.strip()
    if not is_flat(flat):
        return None
    digits = flat[: len(flat) - len(flat.lstrip("0123456789"))]
    return int(digits)


def _flat_number(flat: str) -> int | None:
    # ASCII only: "²" and "١" are digits to str.isdigit(), not to int().
    return int(flat) if flat.isascii() and flat.isdigit() else None


def _ranged_number(flat: str) -> int | None:
    """The number the flats' ranges place a flat by: 12 for "12", "12а" or "12/1" (a
    caller's and a subscriber's row alike); None for no flat, or none written as one."""
    number = _flat_number(flat)
    return number if number is not None else _number_of(flat)


class Directory:
    """The topology with its subscribers, indexed for the phone menu's questions."""

    def __init__(self, topology: Topology, subscribers: Roster | Iterable[Subscriber],
                 phones: PhonePlan = RUSSIA) -> None:  # fmt: skip
        self.topology = topology
        self.phones = phones  # how a number without its country code is read ([phones])
        roster = subscribers if isinstance(subscribers, Roster) else Roster.of(subscribers)
        self.subscribers: Roster = roster
        self.counts: dict[str, int] = roster.counts()  # node -> subscribers it serves directly
        self.streets: dict[str, list[str]] = {}  # street name -> building keys on it
        for address in topology.buildings():
            self.streets.setdefault(address.street, []).append(address.key)
        self._street_names = list(self.streets)
        # A written address -> as parsed, and the keys of the buildings it means (see
        # `address`).
        self._written: dict[str, tuple[Address | None, list[str]]] = {}
        # building key -> the flats of its subscribers not written as flats (`has_flat`);
        # None: not looked for yet.
        self._named_flats: dict[str, set[str]] | None = None

    # -- phone, account --------------------------------------------------------------

    def phone(self, text: str) -> Match:
        phone = normalise_phone(text, self.phones)
        if not phone:
            return NOT_FOUND
        roster = self.subscribers
        found = roster.by_phone(phone)
        if not found:
            return NOT_FOUND
        if len(found) > 1:  # a number several accounts give
            subs = [roster.at(i) for i in found]
            if len({(s.address.key, s.flat) for s in subs}) > 1:
                return Match(candidates=tuple(sorted({s.where().text() for s in subs})))
        sub = roster.at(found[0])
        # Made positionally: the phone menu asks thousands of times a second in a surge.
        return Match((sub.node,), sub.address, sub, (), sub.flat)

    def account(self, text: str) -> Match:
        roster = self.subscribers
        i = roster.by_account(text.strip())
        if i is None:
            return NOT_FOUND
        sub = roster.at(i)
        return Match((sub.node,), sub.address, sub, (), sub.flat)

    # -- free-text address -----------------------------------------------------------

    def address(self, text: str, flat: str = "") -> Match:
        # In a surge the callers of one building ask in the same words: what the words
        # mean is remembered (parsed, matched, fuzzily when need be: all pure, and this
        # directory's topology never changes), the flat is applied each time.
        found = self._written.get(text)
        if found is None:
            found = self._meaning(text)
            if len(self._written) >= _WRITTEN_KEPT:
                self._written.clear()
            self._written[text] = found
        query, keys = found
        if query is None:
            return NOT_FOUND
        flat = flat.strip() or query.flat
        if not keys:
            return NOT_FOUND
        served = self.topology.served
        if len(keys) > 1:
            texts = [served[k][0][0].address.text() for k in keys]
            return Match(candidates=tuple(sorted(texts)))
        key = keys[0]
        # (the key not made again) A flat with a letter or part ("12а", "12/1") is in
        # the part of its number: the caller named their flat, and is not asked again.
        nodes = self.topology.serving_key(key, _ranged_number(flat))
        return Match(tuple(nodes), served[key][0][0].address, None, (), flat)

    def has_flat(self, building: str, flat: str) -> bool:
        """Whether a subscriber of this building (its key) lives in a flat of this name,
        as `flat_key` reads it ("Офис 3", "abc": the file's own names for homes)."""
        return flat_key(flat) in self.named_flats().get(building, ())

    def named_flats(self) -> dict[str, set[str]]:
        """building key -> its subscribers' flats not written as flats (few), gathered at
        the first call: the daemon makes it off the event loop (its load, a reload's
        thread), as a scan of a million subscribers takes a quarter of a second."""
        named = self._named_flats
        if named is None:
            named = {}
            places = self.subscribers.places
            for written, p in zip(_texts(self.subscribers.flats), self.subscribers.place,
                                  strict=True):  # fmt: skip
                number = written.isascii() and written.isdigit()  # most: cheaply passed
                if written and not number and not is_flat(written):
                    named.setdefault(places[p][1].key, set()).add(flat_key(written))
            self._named_flats = named
        return named

    def _meaning(self, text: str) -> tuple[Address | None, list[str]]:
        """A written address as parsed (None: not an address) and the keys of the
        buildings it can mean: matching, or else fuzzily matching."""
        query = addresses.parse(text)
        if query is None:
            return None, []
        return query, self.topology.matching(query) or self._fuzzy(query)

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


_TABLE_FLATS = 4096  # flat numbers a building's lookup table covers at most


class _Written:
    """A written address: as parsed, and where each flat of it leads."""

    __slots__ = ("address", "every", "only", "ranged", "table", "whole")

    def __init__(self, address: Address, ranged: list[tuple[int, int, int]], whole: list[int],
                 every: list[int]) -> None:  # fmt: skip
        self.address = address
        self.ranged = ranged  # (lo, hi, place) of the flat ranges
        self.whole = whole  # places serving the whole building
        self.every = every
        # The one place whatever the flat, else -1; and by flat number, the one place
        # (or -1: none or several, which `_Places.of` puts in words).
        self.only = every[0] if len(every) == 1 and not ranged else -1
        self.table = array("i")
        top = max((hi for _, hi, _ in ranged), default=-1)
        if top <= _TABLE_FLATS:
            # Ranges of one building do not overlap between nodes (the topology's check).
            self.table = array("i", repeat(whole[0] if len(whole) == 1 else -1, top + 1))
            for lo, hi, place in ranged:
                self.table[lo : hi + 1] = array("i", repeat(place, hi + 1 - lo))

    def nodes(self, number: int | None) -> list[int]:
        """The places a flat's number leads to (Topology.serving's rule)."""
        if number is None:
            return self.every
        nodes: list[int] = []
        for lo, hi, place in self.ranged:
            if lo <= number <= hi and place not in nodes:
                nodes.append(place)
        return nodes or self.whole


class _Places:
    """Where a written address and flat lead: (place index, flat), or the sentence why
    nowhere; remembered per written address (a building's rows repeat its text)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.places: list[tuple[str, Address]] = []
        self._index: dict[tuple[str, int], int] = {}  # (node, id of building) -> place
        self.written: dict[str, _Written | str] = {}  # or the sentence why it leads nowhere

    def _place(self, node: str, building: Address) -> int:
        key = (node, id(building))
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.places)
            self.places.append((node, building))
        return found

    def let_go(self) -> None:
        """Free the written addresses' meanings and the places' index an entry at a time.
        Left to the reading's end, the tens of thousands of them (a _Written, its Address,
        arrays and lists each) were freed in one cascade as `_read_rows` returned, holding
        the interpreter's lock, and a reload's event loop beside it, for 17-27 ms on a
        loaded machine; a loop of pops lets the lock go between entries."""
        for entries in (self.written, self._index):
            pop = entries.popitem
            for _ in range(len(entries)):
                pop()

    def building(self, raw: str) -> _Written | str:
        found = self.written.get(raw)
        if found is None:
            found = self.written[raw] = self._building(raw)
        return found

    def _building(self, raw: str) -> _Written | str:
        address = addresses.parse(raw)
        if address is None:
            return f"address {raw!r} has no street and house number."
        topology = self.topology
        # The CRM is the provider's own record: an exact building wins; a caller saying
        # "Ленина 5" is asked which of 5, 5к1, 5к2 they mean, the export is not.
        keys = [address.key] if address.key in topology.served else topology.matching(address)
        if len(keys) > 1:
            return (
                f"address {raw!r} could be any of "
                f"{'; '.join(topology.served[k][0][0].address.text() for k in keys)}."
            )
        if not keys:  # no building: each row's sentence says so, with its flat
            return _Written(address, [], [], [])
        entries = topology.served[keys[0]]
        building = entries[0][0].address
        ranged = [(lo, hi, self._place(n, building)) for s, n in entries if s.flats is not None
                  for lo, hi in s.flats]  # fmt: skip
        whole = list(dict.fromkeys(self._place(n, building) for s, n in entries
                                   if s.flats is None))  # fmt: skip
        every = list(dict.fromkeys(self._place(n, building) for _, n in entries))
        return _Written(address, ranged, whole, every)

    def of(self, written: _Written, raw_flat: str) -> tuple[int, str] | str:
        """(place, flat) for a row, or the sentence why it has none."""
        address = written.address
        flat = raw_flat or address.flat
        # "12а", "12/1": in flat 12's part, as a caller asking for it is (Directory.address)
        nodes = written.nodes(_ranged_number(flat))
        if len(nodes) == 1:
            return nodes[0], flat
        if not nodes:
            return (
                f"address {address.text(with_flat=False)!r}"
                f"{f' flat {flat}' if flat else ''} is served by no node in the topology."
            )
        split = ", ".join(self.places[p][0] for p in nodes)
        if flat and _flat_number(flat) is None:  # given, and no plain number
            return (f"address {address.text(with_flat=False)!r} is split between {split} by "
                    f"flat number, and flat {flat!r} is not a number.")  # fmt: skip
        return (
            f"address {address.text(with_flat=False)!r} is split between "
            f"{split} by flat; give the flat."
        )


@functools.lru_cache(maxsize=8)
def _national(plan: PhonePlan) -> tuple[re.Pattern[str], str]:
    """What finds, in a chunk's phones (a line each between sentinel line breaks: see
    _at_once), a national number ("8 921 ...", "921 ...", "7 921 ..." in Russia's plan)
    and what replaces its start: the number as `plan.normalise` gives it."""
    national = f"(?=[0-9]{{{plan.national_digits}}}\\n)"
    starts = [re.escape(p) for p in (plan.trunk_prefix, plan.country_code) if p]
    prefixed = f"(?:{'|'.join(starts)}){national}|" if starts else ""
    return re.compile(f"\\n(?:{prefixed}{national})"), f"\n+{plan.country_code}"


# A chunk's given ips, a line each: IPv4 as inet_ntop writes it (no leading zero, <= 255).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_IPV4_LINES = re.compile(rf"{_IPV4}(?:\n{_IPV4})*")


def _at_once(
    chunk: list[list[str]], columns: int, at: tuple[int, int, int, int, int],
    places: _Places, topo_ips: dict[str, str], plan: PhonePlan = RUSSIA,
) -> tuple[list[str], list[str], list[str], list[str], list[int]] | None:  # fmt: skip
    """A chunk's accounts, phones, flats, ips and places as the row-by-row reading makes
    them, a column at a time in chains of C and calls over the column's joined text (a
    call of Python per new address, not per row; ~20 % less CPU than the row loop); None
    when any row of it may have a problem, or a rarer form: the chunk is then read row by
    row, which words each problem."""
    if set(map(len, chunk)) != {columns}:
        return None  # some row's fields are not the header's
    ia, iph, iad, ifl, iip = at
    fields = list(zip(*chunk, strict=True))
    # One search for a bad character in the five columns (isprintable() in C first);
    # none, so no line break in a value: the columns' texts are read a line a value.
    joined = ",".join(map(",".join, map(fields.__getitem__, at)))
    if not joined.isprintable() and bad_character(joined) is not None:
        return None
    del joined
    n = len(chunk)
    accounts = list(map(str.strip, fields[ia]))
    if not all(accounts):
        return None
    # The phones as normalise_phone makes them: a "+" only where a value starts, the
    # rest digits but for the marks it drops; the national numbers then given "+CODE"; and
    # then each value "+" and 8 to 15 digits, or empty as written.
    raw = "\n".join(map(str.strip, fields[iph]))
    if raw.count("+") != raw.count("\n+") + (raw[:1] == "+"):
        return None
    text = raw.replace(" ", "").replace("-", "").replace("(", "").replace(")", "")
    digits = text.replace("+", "").replace("\n", "")
    if digits and not (digits.isdigit() and digits.isascii()):
        return None
    national, code = _national(plan)
    text = national.sub(code, f"\n{text}\n")
    phones = text[1:-1].split("\n")
    lengths = set(map(len, phones))
    empty = phones.count("") if 0 in lengths else 0
    if text.count("\n+") != n - empty or not lengths <= _E164_LENGTHS:
        return None
    if empty and empty != raw.split("\n").count(""):
        return None  # marks without a digit ("-"): no number, yet not empty
    # The ips: canonical IPv4 (or else each made canonical), none a topology device's.
    ips = list(map(str.strip, fields[iip]))
    given = list(filter(None, ips))
    if given and not _IPV4_LINES.fullmatch("\n".join(given)):  # IPv6, or not canonical
        canonical = list(map(addresses.canonical_ip, given))
        if None in canonical:
            return None
        given = cast("list[str]", canonical)
        made = iter(given)
        ips = [next(made) if ip else "" for ip in ips]
    if not topo_ips.keys().isdisjoint(given):
        return None
    # The places: a written address's meaning once (remembered), then each row's flat.
    written_at = places.written.get
    raw_addresses = list(map(str.strip, fields[iad]))
    written = list(map(written_at, raw_addresses))
    if None in written:  # the new addresses' meanings, then the chunk's again
        for new in dict.fromkeys(compress(raw_addresses, map(is_, written, repeat(None)))):
            places.building(new)
        written = list(map(written_at, raw_addresses))
    try:
        place: list[int] = list(map(_ONLY, written))
    except AttributeError:  # a sentence, not a _Written: that row has a problem
        return None
    flats = list(map(str.strip, fields[ifl]))
    by_flat = list(compress(count(), map(gt, repeat(0), place)))  # split by flat number
    if by_flat:
        every = len(by_flat) == n
        numbers = flats if every else list(map(flats.__getitem__, by_flat))
        joined = "".join(numbers)
        if not (all(numbers) and joined.isdigit() and joined.isascii()):
            return None
        tables = map(_TABLE, written if every else map(written.__getitem__, by_flat))
        try:
            found = list(map(getitem, tables, map(int, numbers)))
        except IndexError:  # above the building's table
            return None
        if -1 in found:  # no node, or several, for that flat: the row's sentence
            return None
        if every:
            place = found
        else:
            for i, p in zip(by_flat, found, strict=True):
                place[i] = p
    if not all(flats):  # a building in one place: its address's flat, when the row has none
        flats = [f or cast("_Written", w).address.flat for f, w in zip(flats, written, strict=True)]
    return accounts, phones, flats, ips, place


_E164_LENGTHS = {0, *range(9, 17)}  # "+" and 8 to 15 digits, or no number
_ONLY = attrgetter("only")
_TABLE = attrgetter("table")


def read_rows(
    rows: Iterator[list[str]], path: Path, topology: Topology, plan: PhonePlan = RUSSIA
) -> tuple[Roster, list[str]]:
    """Subscribers from CSV rows (the header first), and a sentence for each row that could
    not be used. Rows are taken a chunk at a time into columns: at no time is there a
    Python object per subscriber."""
    roster, problems, _, _ = _read_rows(rows, path, topology, plan)
    return roster, problems


class _Routers:
    """The ids (cpe:ACCOUNT) and ips of the subscribers' routers, in the roster's order,
    kept as the file is read, a chunk's in one text a line each (no value holds a line
    break: see bad_character) for `with_cpes`, which splits them: each string made in one
    call, not cut out of its column by two (a slice and the cut), nor made again with its
    "cpe:" (a million strings more, made and freed). Not the strings read: those lie
    scattered among the row's freed ones, and a process forked after the load wrote into
    their half-empty pages as it allocated (16 MiB more of its own)."""

    __slots__ = ("ids", "ips")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.ips: list[str] = []


class _Unchecked:
    """A roster whose routers' ips were not compared with each other as it was read (see
    `load`): the roster, and its rows' problems, for the whole check should two of them
    share one."""

    __slots__ = ("problems", "roster")

    def __init__(self, roster: Roster, problems: list[tuple[int, str]]) -> None:
        self.roster, self.problems = roster, problems

    def checked(self, path: Path) -> tuple[Roster, list[str]]:
        """The roster less every duplicate, ips too (as `read_rows` leaves it), and the
        problems in words."""
        kept, more = _without_duplicates(self.roster)
        return kept, _worded(path, self.problems + more)


def _worded(path: Path, problems: list[tuple[int, str]]) -> list[str]:
    problems.sort(key=lambda p: p[0])
    return [f"{path}: row {n}: {text}" for n, text in problems]


def _read_rows(
    rows: Iterator[list[str]], path: Path, topology: Topology, plan: PhonePlan,
    check_ips: bool = True,
) -> tuple[Roster, list[str], _Routers | None, _Unchecked | None]:  # fmt: skip
    """read_rows, and the routers as read (None: made from the roster's columns).
    `check_ips` False: two routers at one ip are not looked for, unless a duplicate
    account was found (the last: what the whole check needs, when the routers' own
    address map finds two at one ip; else None)."""
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        # A spreadsheet's export in a locale that writes ';' or tabs between fields.
        other = next((sep for sep in (";", "\t") if len(header) == 1 and sep in header[0]), "")
        hint = (f" (its fields are separated by {'tabs' if other == chr(9) else repr(other)}: "
                "the file must be comma-separated)") if other else ""  # fmt: skip
        empty = Roster(Column(), Column(), Column(), Column(), array("I"), array("I"), [])
        return empty, [f"{path}: the header lacks column(s) {', '.join(missing)}{hint}; "
                       f"it must name {','.join(COLUMNS)}."], None, None  # fmt: skip
    problems: list[tuple[int, str]] = []
    ia, iph, iad, ifl, iip = (header.index(c) for c in COLUMNS)
    at = (ia, iph, iad, ifl, iip)
    width = max(ia, iph, iad, ifl, iip) + 1
    columns = len(header)
    # A plain dict of the topology's own addresses (switches: thousands), asked of every
    # row: the sharded mapping's `in` is a call of Python.
    topo_ips = dict(topology.by_ip.items())
    places = _Places(topology)
    written_at, building = places.written.get, places.building
    normalise_phone, canonical_ip = plan.normalise, addresses.canonical_ip
    ntop, pton, inet = socket.inet_ntop, socket.inet_pton, socket.AF_INET
    accounts, phones, flats, ips = (_ColumnBuilder() for _ in range(4))
    numbers: list[array[int]] = []  # each chunk's, joined at the end (see _joined)
    place_of: list[array[int]] = []
    # The indexes' keys, each text hashed as read (see _Keys); slots: positions in the roster.
    accounts_keys, phones_keys = _Keys(), _Keys()
    ips_keys = _Keys() if check_ips else None
    routers = _Routers()
    row_number = 1
    while True:
        chunk = _chunk(rows)
        if not chunk:
            break
        done = _at_once(chunk, columns, at, places, topo_ips, plan)
        if done is not None:  # every row of the chunk good, read column by column
            for builder, column in zip((accounts, phones, flats, ips), done[:4], strict=True):
                builder.extend(column)
            _keyed(done[0], done[1], done[3], accounts_keys, phones_keys, ips_keys, routers)
            numbers.append(array("I", range(row_number + 1, row_number + 1 + len(chunk))))
            place_of.append(array("I", done[4]))
            row_number += len(chunk)
            continue
        # One search a chunk: only a chunk with a bad character anywhere checks row by row.
        # isprintable() (false for every control character and surrogate, and for a few
        # more) in C first: the expression is searched only where it can find one.
        joined = ",".join(map(",".join, chunk))
        checked = not joined.isprintable() and bad_character(joined) is not None
        del joined
        c_accounts: list[str] = []
        c_phones: list[str] = []
        c_flats: list[str] = []
        c_ips: list[str] = []
        c_rows: list[int] = []
        c_places: list[int] = []
        for fields in chunk:
            row_number += 1
            if len(fields) != columns:
                if len(fields) < width:
                    if fields:
                        problems.append((row_number, f"has {len(fields)} fields, "
                                                     f"the header {len(header)}."))  # fmt: skip
                    continue
                if len(fields) > columns:
                    # An unquoted comma shifts every field after it: the row's values are
                    # not where the header says (the shifted row often ends in an empty
                    # field: the ip, so empty extras prove nothing either).
                    problems.append((row_number, f"has {len(fields)} fields, the header "
                                                 f"{columns}: quote a value that holds a "
                                                 "comma."))  # fmt: skip
                    continue
            account = fields[ia].strip()
            raw_phones = fields[iph].strip()
            raw_address = fields[iad].strip()
            raw_flat = fields[ifl].strip()
            raw_ip = fields[iip].strip()
            if checked:
                values = (account, raw_phones, raw_address, raw_flat, raw_ip)
                bad = next(((c, b) for c, v in zip(COLUMNS, values, strict=True)
                            if (b := bad_character(v)) is not None), None)  # fmt: skip
                if bad is not None:
                    # PostgreSQL refuses a NUL, UTF-8 a lone surrogate: the row, not the load.
                    problems.append((row_number, f"{bad[0]} holds {bad[1]}; fix the export."))
                    continue
            if not account:
                problems.append((row_number, "account is empty."))
                continue
            phone = normalise_phone(raw_phones) if ";" not in raw_phones else None
            if phone is None:  # several numbers, or one to complain about
                given: list[str] = []
                bad_phone = False
                for raw_phone in raw_phones.split(";"):
                    if not raw_phone.strip():
                        continue
                    one = normalise_phone(raw_phone)
                    if one is None:
                        problems.append((row_number, f"phones: {raw_phone.strip()!r} "
                                                     "is not a phone number."))  # fmt: skip
                        bad_phone = True
                    else:
                        given.append(one)
                if bad_phone:
                    # Left out as every row with a problem is (the README's choices, the
                    # skipped-rows gauge): loaded without its phone, a caller dialling from
                    # it would hear "not found" while the CRM row says otherwise.
                    continue
                phone = ";".join(given)
            written = written_at(raw_address)
            if written is None:
                written = building(raw_address)
            if isinstance(written, str):
                problems.append((row_number, written))
                continue
            place = written.only
            flat = raw_flat
            if place < 0:
                table = written.table
                if raw_flat.isdigit() and raw_flat.isascii() and int(raw_flat) < len(table):
                    place = table[int(raw_flat)]
                if place < 0:
                    found = places.of(written, raw_flat)
                    if isinstance(found, str):
                        problems.append((row_number, found))
                        continue
                    place, flat = found
            elif not flat:
                flat = written.address.flat
            ip = ""
            if raw_ip:
                if ":" in raw_ip:
                    canonical = canonical_ip(raw_ip)
                else:  # canonical_ip's IPv4 case, inline (a call a row saved)
                    try:
                        canonical = ntop(inet, pton(inet, raw_ip))
                    except (OSError, ValueError):
                        canonical = None
                if canonical is None:
                    problems.append((row_number, f"ip {raw_ip!r} is not an IP address."))
                    continue
                if canonical in topo_ips:
                    problems.append((row_number, f"ip {canonical} is already used by "
                                                 f"{topo_ips[canonical]!r}."))  # fmt: skip
                    continue
                ip = canonical
            c_accounts.append(account)
            c_phones.append(phone)
            c_flats.append(flat)
            c_ips.append(ip)
            c_rows.append(row_number)
            c_places.append(place)
        accounts.extend(c_accounts)
        phones.extend(c_phones)
        flats.extend(c_flats)
        ips.extend(c_ips)
        _keyed(c_accounts, c_phones, c_ips, accounts_keys, phones_keys, ips_keys, routers)
        # As arrays: the chunk's int objects are freed here, 2,000 at a time. Kept as lists
        # to the end, the million were freed in one cascade as this function returned,
        # holding the interpreter's lock (and a reload's event loop) for ~40 ms.
        numbers.append(array("I", c_rows))
        place_of.append(array("I", c_places))
    total = accounts_keys.taken
    made = total <= _SLOT_MASK  # else more positions than the packing holds: made anew
    roster = Roster(
        accounts.done(), phones.done(), flats.done(), ips.done(), _joined(numbers, "I"),
        _joined(place_of, "I"), places.places,
        (accounts_keys.index(), phones_keys.index()) if made else None,
    )  # fmt: skip
    places.let_go()  # the roster keeps its places list, not the meanings (see let_go)
    unchecked = None
    if ips_keys is not None:
        kept, more = _without_duplicates(roster, ips_keys.index() if made else None)
    else:
        kept, more = _without_duplicates(roster, check_ips=False)
        if kept is roster:  # no duplicate account: the routers' ips are checked by `load`
            unchecked = _Unchecked(roster, [*problems])
        else:  # the whole check, every row in order, as read_rows makes it
            kept, more = _without_duplicates(roster)
    # The routers as read, unless a duplicate was left out of the roster since.
    return kept, _worded(path, problems + more), (routers if kept is roster else None), unchecked


def _chunk(rows: Iterator[list[str]]) -> list[list[str]]:
    """The next CHUNK_ROWS rows (fewer at the file's end), parsed PIECE_ROWS at a time: a
    `list(islice(...))` of the whole chunk is one call into C, the csv module's parse and
    the file's reads and decoding in it, that held the interpreter's lock (a reload's event
    loop beside it) for 6-8 ms on a loaded machine."""
    chunk: list[list[str]] = []
    while len(chunk) < CHUNK_ROWS:
        before = len(chunk)
        chunk += islice(rows, min(PIECE_ROWS, CHUNK_ROWS - before))
        if len(chunk) == before:  # the file's end
            break
    return chunk


def _keyed(accounts: list[str], phones: list[str], ips: list[str], by_account: _Keys,
           by_phone: _Keys, by_ip: _Keys | None, routers: _Routers) -> None:  # fmt: skip
    """A chunk's keys added to the indexes: its accounts, each number it gives (a
    subscriber's numbers are joined by ";"), its ips given; at their positions next. And
    its routers' ids and ips (see _Routers)."""
    at = by_account.taken
    by_account.add(accounts, count(at))
    if ";" in "".join(phones):  # several numbers for some: one entry per number
        numbers = [p.split(";") for p in phones]
        owners = chain.from_iterable(map(repeat, count(at), map(len, numbers)))
        split = list(chain.from_iterable(numbers))
        by_phone.add(compress(split, split), compress(owners, split))
    else:
        by_phone.add(compress(phones, phones), compress(count(at), phones))
    given = list(compress(ips, ips))
    if by_ip is not None:
        by_ip.add(given, compress(count(at), ips))
    if given:
        routers.ips.append("\n".join(given))
        routers.ids.append("cpe:" + "\ncpe:".join(compress(accounts, ips)))


def _without_duplicates(roster: Roster, by_ip: HashIndex | None = None, check_ips: bool = True
                        ) -> tuple[Roster, list[tuple[int, str]]]:  # fmt: skip
    """A second account of the same number, or a second router at one ip, is left out
    (the first row keeps it). Only the rows whose hashes collide are looked at, in row
    order, as a single pass over every row would. `by_ip`: the given ips' index by their
    subscribers' positions, when made as the file was read; `check_ips` False: only
    accounts compared."""
    suspects = set(roster._by_account.collisions())
    if not check_ips:
        pass
    elif by_ip is not None:
        suspects.update(by_ip.collisions())
    else:
        with_ip = _filled(roster.ips)
        given = filter(None, _texts(roster.ips))  # the ips given, in order (with_ip's)
        by_ip = HashIndex(given, range(len(with_ip)), len(with_ip))
        suspects.update(with_ip[i] for i in by_ip.collisions())
    if not suspects:
        return roster, []
    problems: list[tuple[int, str]] = []
    drop: set[int] = set()
    accounts: dict[str, int] = {}
    ips: dict[str, str] = {}
    for i in sorted(suspects):
        account, ip, row = roster.accounts[i], roster.ips[i], roster.rows[i]
        if account in accounts:
            problems.append((row, f"account {account!r} is already on row {accounts[account]}."))
            drop.add(i)
        elif ip and ip in ips:
            problems.append((row, f"ip {ip} is already used by {ips[ip]!r}."))
            drop.add(i)
        else:
            accounts[account] = row
            if ip:
                ips[ip] = cpe_id(account)
    return (roster.without(drop) if drop else roster), problems


def parse_csv(text: str, path: Path, topology: Topology) -> tuple[list[Subscriber], list[str]]:
    """Subscribers from the CSV text, and a sentence for each row that could not be used."""
    roster, problems = read_rows(csv.reader(io.StringIO(text)), path, topology)
    return list(roster), problems


def with_cpes(topology: Topology, subscribers: Roster | Iterable[Subscriber],
              made: _Routers | None = None) -> Topology:  # fmt: skip
    """The topology plus a probed `cpe` node under the serving node of each subscriber with
    ip (`made`: their ids and ips made as this roster was read, taken from it)."""
    roster = subscribers if isinstance(subscribers, Roster) else Roster.of(subscribers)
    # One uplink tuple per serving node, shared by its routers.
    uplinks = [(serving,) for serving, _ in roster.places]
    ends = roster.ips.ends

    def with_ip() -> Iterator[bool]:
        return map(ne, ends, chain((0,), ends))

    # A chain of C over the columns, each router made as the topology takes it in (no
    # list of a million routers beside its dict). Named by its id (the same string:
    # "cpe:ACCOUNT" says whose it is), line 0 (its row is the roster's): two objects
    # fewer a router, ~80 MiB at a million.
    ids: Iterable[str]
    ips: Iterable[str]
    if made is not None:  # kept as read: split, not cut out of the columns (see _Routers)
        ids = _lines(made.ids)
        ips = _lines(made.ips)
    else:
        ids = map("cpe:".__add__, compress(_texts(roster.accounts), with_ip()))
        ips = filter(None, _texts(roster.ips))
    ups = map(uplinks.__getitem__, compress(roster.place, with_ip()))
    # Each router made by map() calling Node from C, every field given (a generator's
    # frame resumed a router, and the labels' default factory called: ~550 instructions
    # a router more, callgrind, 50,000 routers); the id twice (its name), by tee. As
    # zip(strict=True): all three used up.
    ids, names = tee(ids)
    routers = map(Node, ids, repeat("cpe"), ips, ups, names, repeat(()), repeat(0),
                  repeat(()), repeat(NO_LABELS))  # fmt: skip
    out = Topology(list(topology.nodes.values()), routers)
    if any(next(it, None) is not None for it in (names, ips, ups)):
        raise ValueError("with_cpes: the routers' ids, ips and uplinks differ in number")
    return out


def _let_go(topology: Topology) -> None:
    """A topology's nodes and addresses freed a slice at a time: a million routers let go
    of at once are freed in one cascade that holds the interpreter's lock (a reload's
    event loop beside it) for tens of milliseconds."""
    for part in (*topology.by_ip.parts(), *topology.nodes.parts()):
        if isinstance(part, dict):
            pop = part.popitem
            for _ in range(len(part)):
                pop()
        elif isinstance(part, list):
            while part:
                del part[-_RUN:]


def _lines(texts: list[str]) -> Iterator[str]:
    """The lines of each text in order, each text let go of once split: a text's lines
    iterated by chain() in C (`yield from` resumed a generator for each: ~210
    instructions a line more, callgrind, 50,000 routers)."""
    texts.reverse()

    def split() -> Iterator[list[str]]:
        while texts:
            yield texts.pop().split("\n")

    return chain.from_iterable(split())


@dataclass(frozen=True, slots=True)
class Loaded:
    directory: Directory
    problems: list[str]  # subscriber rows that were left out, each with its reason


def load(topology_path: Path, subscribers_path: Path | None, phones: PhonePlan = RUSSIA
         ) -> Loaded:  # fmt: skip
    """Read both files (numbers without a country code read by `phones`); TopologyError
    for a broken topology, row problems returned."""
    from outagemon.core import topology as topology_mod

    # Millions of objects are made and none is garbage: the cyclic collector would walk
    # them all again and again for nothing.
    enabled = gc.isenabled()
    gc.disable()
    map_large_blocks()
    keep_freed_memory(True)
    try:
        topo = topology_mod.load(topology_path)
        if subscribers_path is None:
            return Loaded(Directory(topo, [], phones), [])
        roster, problems, routers, unchecked = _read_file(subscribers_path, topo, phones)
        release_free_memory()  # the chunks' and the sorts' buffers, before the routers
        whole = with_cpes(topo, roster, routers)
        if unchecked is not None and whole.by_ip.repeated:
            # Two routers at one ip: the roster checked whole, the routers made anew (a
            # file with that problem loads slower, as read before the routers' map).
            _let_go(whole)
            del whole
            roster, problems = unchecked.checked(subscribers_path)
            whole = with_cpes(topo, roster)
        del unchecked
        loaded = Loaded(Directory(whole, roster, phones), problems)
        release_free_memory()
        return loaded
    finally:
        keep_freed_memory(False)
        if enabled:
            gc.enable()


def _libc(name: str) -> Callable[..., int] | None:
    try:
        return cast("Callable[..., int]", getattr(ctypes.CDLL(None), name))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to call
        return None


_TRIM = _libc("malloc_trim")
_MALLOPT = _libc("mallopt")
_M_TOP_PAD = -2  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# Free memory kept at the heap's top when glibc gives the rest back: its default (which,
# unlike the trim threshold, glibc never moves by itself), and while loading.
TOP_PAD = 128 << 10
KEPT_WHILE_LOADING = 16 << 20
LARGE_BLOCK = 1 << 20  # bytes: a block this large or larger has pages of its own (mmap)


def map_large_blocks() -> None:
    """Have glibc give every block of LARGE_BLOCK or more pages of its own, for good.

    By default the threshold rises to the largest block freed (up to 32 MiB), and a list
    of a million entries then grows inside the heap: each time it outgrows its memory it
    is copied whole, into fresh pages faulted in one by one, in one call into C that
    holds the interpreter's lock (a reload's event loop beside it) for 15-25 ms. Mapped,
    it grows by mremap(): no copy, and its new pages are faulted as entries are written."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, LARGE_BLOCK)


def keep_freed_memory(keep: bool) -> None:
    """While loading (`keep`), have glibc keep 16 MiB of the memory freed at its heap's
    top when it gives the rest back; after, its default 128 KiB. Each chunk of the
    subscriber file allocates and frees some hundreds of KiB there: given back each time,
    its pages were faulted in again by the next chunk, half of a million-subscriber load's
    page faults (~250,000 in all, 0.3 s of system CPU). What is kept is given back at the
    load's end (release_free_memory). Not the trim threshold: glibc raises that by itself
    as large blocks are freed, so its value before the load is not known to restore."""
    if _MALLOPT is not None:
        _MALLOPT(_M_TOP_PAD, KEPT_WHILE_LOADING if keep else TOP_PAD)


def release_free_memory() -> None:
    """Give the C allocator's free memory back to the system (glibc's malloc_trim).

    Loading allocates and frees large buffers by the hundred (each chunk's rows, each
    column's parts, the runs of sorted keys, arrays as they grow): glibc keeps what is
    freed inside its heap, and a million subscribers left ~90 MiB of it resident, unused,
    until the process ends. Python's own small-object arenas are not touched."""
    if _TRIM is not None:
        _TRIM(0)


def _read_file(path: Path, topology: Topology, phones: PhonePlan
               ) -> tuple[Roster, list[str], _Routers | None, _Unchecked | None]:  # fmt: skip
    try:
        # utf-8-sig: CRM exports often start with a byte-order mark
        with path.open(encoding="utf-8-sig", newline="") as f:
            # Read a MiB at a time: each read lets go of the interpreter's lock and takes it
            # straight back, and a thread waiting for the lock (a reload's event loop) waits
            # anew after each such hand-back; read 8 KiB at a time (the default: a read
            # every ~0.5 ms), it waited through all of them, 0.2-1.1 s on a quiet machine.
            f._CHUNK_SIZE = READ_BUFFER  # type: ignore[attr-defined]  # CPython's, settable
            # The routers' ips compared by the topology's address map (see `load`).
            return _read_rows(csv.reader(f), path, topology, phones, check_ips=False)
    except FileNotFoundError:
        raise TopologyError([f"{path}: no such file."]) from None
    except UnicodeDecodeError as e:
        raise TopologyError([not_utf8(path, e)]) from None
    except (OSError, csv.Error) as e:
        raise TopologyError([f"{path}: cannot be read: {e}."]) from None
