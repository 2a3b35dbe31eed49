"""From a caller (phone, account, address) to the node that serves them."""

from __future__ import annotations

import bisect
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagemon.core import directory, topology
from outagemon.core.addresses import RUSSIA, PhonePlan
from outagemon.core.directory import Directory
from outagemon.errors import TopologyError
from outagemon.sim import citygen

TOPO = topology.parse_text(
    textwrap.dedent(
        """
        nodes:
          - {id: core, kind: core, ip: 127.0.0.2}
          - id: sw-lenina
            kind: access
            ip: 127.0.0.3
            parents: [core]
            serves: ["ул. Ленина, д. 5", "ул. Ленина, д. 5 корп. 1", "ул. Ленина, д. 5 корп. 2"]
          - {id: sw-mira, kind: access, ip: 127.0.0.4, parents: [core]}
          - {id: seg-1, kind: segment, parents: [sw-mira],
             serves: [{address: "пр-т Мира, д. 10", flats: "1-40"}]}
          - {id: seg-2, kind: segment, parents: [sw-mira],
             serves: [{address: "пр-т Мира, д. 10", flats: "41-80"}]}
          - {id: sw-sad, kind: access, ip: 127.0.0.5, parents: [core],
             serves: ["ул. Садовая, д. 3"]}
        """
    ),
    Path("topology.yaml"),
)
CSV = """account,phones,address,flat,ip
1001,8 (921) 123-45-67,"ул. Ленина, д. 5",12,
1002,+79211110000;+79212220000,"Мира 10",15,127.0.1.1
1003,+79212220000,"пр-т Мира, д. 10 кв. 50",,127.0.1.2
1004,+79213330000,"ул. Садовая 3",1,
1005,+79213330000,"ул. Садовая 3",1,
"""
PATH = Path("subscribers.csv")


def build(csv_text: str = CSV) -> tuple[Directory, list[str]]:
    subs, problems = directory.parse_csv(csv_text, PATH, TOPO)
    return Directory(directory.with_cpes(TOPO, subs), subs), problems


def test_the_example_rows_load_without_problems() -> None:
    d, problems = build()
    assert problems == []
    assert len(d.subscribers) == 5
    # rows with an ip became probed cpe nodes under the entrance that serves their flat
    assert d.topology.nodes["cpe:1002"].parents == ("seg-1",)
    assert d.topology.nodes["cpe:1003"].parents == ("seg-2",)
    assert d.topology.nodes["cpe:1002"].ip == "127.0.1.1"


def test_a_phone_in_any_notation_finds_its_subscriber() -> None:
    d, _ = build()
    for written in ("89211234567", "+7 921 123 45 67", "9211234567"):
        m = d.phone(written)
        assert m.found and m.subscriber is not None and m.subscriber.account == "1001"
        assert m.nodes == ("sw-lenina",)


def test_one_phone_at_two_addresses_is_ambiguous() -> None:
    d, _ = build()
    m = d.phone("+79212220000")
    assert not m.found and m.ambiguous
    assert m.candidates == ("пр-т Мира, д. 10, кв. 15", "пр-т Мира, д. 10, кв. 50")


def test_one_phone_for_two_accounts_in_one_flat_is_one_place() -> None:
    d, _ = build()
    m = d.phone("+79213330000")
    assert m.found and m.nodes == ("sw-sad",)


def test_a_subscriber_with_a_router_is_answered_for_by_the_router() -> None:
    d, _ = build()
    assert d.account("1002").nodes == ("cpe:1002",)
    assert d.account("1001").nodes == ("sw-lenina",)


def test_unknown_phone_and_account_are_not_found() -> None:
    d, _ = build()
    assert d.phone("+79990000000") == directory.NOT_FOUND
    assert d.phone("not a phone") == directory.NOT_FOUND
    assert d.account("424242") == directory.NOT_FOUND


def test_address_with_flat_finds_the_entrance() -> None:
    d, _ = build()
    assert d.address("Мира 10", flat="55").nodes == ("seg-2",)
    assert d.address("проспект Мира 10 кв 3").nodes == ("seg-1",)
    # without a flat, both entrances serve the house
    assert set(d.address("Мира 10").nodes) == {"seg-1", "seg-2"}


def test_lenina_5_when_5_5k1_and_5k2_exist_is_ambiguous() -> None:
    d, _ = build()
    m = d.address("Ленина 5")
    assert m.ambiguous and not m.found
    assert m.candidates == (
        "ул. Ленина, д. 5",
        "ул. Ленина, д. 5, корп. 1",
        "ул. Ленина, д. 5, корп. 2",
    )
    assert d.address("Ленина 5к2").nodes == ("sw-lenina",)


def test_a_misspelt_street_is_found_when_one_street_is_close() -> None:
    d, _ = build()
    m = d.address("ул. Садовоя 3")
    assert m.nodes == ("sw-sad",)
    assert m.address is not None and m.address.text() == "ул. Садовая, д. 3"


def test_an_address_nobody_serves_is_not_found() -> None:
    d, _ = build()
    assert d.address("ул. Садовая 99") == directory.NOT_FOUND
    assert d.address("Тверская 1") == directory.NOT_FOUND
    assert d.address("gibberish") == directory.NOT_FOUND


def test_each_bad_row_is_reported_with_its_number_and_the_rest_load() -> None:
    _, problems = build(
        "account,phones,address,flat,ip\n"
        "2001,+79210000001,ул. Ленина 5,1,\n"
        "2001,+79210000002,ул. Ленина 5,2,\n"
        ",+79210000003,ул. Ленина 5,3,\n"
        "2004,12345,ул. Ленина 5,4,\n"
        "2005,+79210000005,ул. Ленина 5,5,999.1.1.1\n"
        "2006,+79210000006,ул. Ленина 5,6,127.0.0.3\n"
        "2007,+79210000007,ул. Тверская 1,7,\n"
        "2008,+79210000008,пр-т Мира 10,,\n"
        "2009,+79210000009,Ленина,1,\n"
        "2010,+79210000010,Ленина 5,1,\n"
    )
    expected = [
        "row 3: account '2001' is already on row 2.",
        "row 4: account is empty.",
        "row 5: phones: '12345' is not a phone number.",
        "row 6: ip '999.1.1.1' is not an IP address.",
        "row 7: ip 127.0.0.3 is already used by 'sw-lenina'.",
        "row 8: address 'ул. Тверская, д. 1' flat 7 is served by no node in the topology.",
        "row 9: address 'пр-т Мира, д. 10' is split between seg-1, seg-2 by flat; give the flat.",
        "row 10: address 'Ленина' has no street and house number.",
        "row 11: address 'Ленина 5' could be any of",
    ]
    assert len(problems) == len(expected), problems
    for line, text in zip(problems, expected, strict=True):
        assert line.startswith(f"{PATH}: ") and text in line, (line, text)


def test_a_row_with_more_fields_than_the_header_is_reported() -> None:
    """An unquoted comma in an address shifts the fields after it: such a row is left out
    and named (it was loaded with its values in the wrong columns: here flat 'кв. 3')."""
    d, problems = build(
        "account,phones,address,flat,ip\n"
        "3001,+79210000001,ул. Ленина 5, кв. 3,,\n"
        "3002,+79210000002,ул. Ленина 5,2,\n"
        "3003,+79210000003,ул. Ленина 5,3,,extra\n"
    )
    assert [p.split(": ", 1)[1] for p in problems] == [
        "row 2: has 6 fields, the header 5: quote a value that holds a comma.",
        "row 4: has 6 fields, the header 5: quote a value that holds a comma.",
    ], problems
    assert d.account("3002").subscriber is not None
    assert d.account("3001").subscriber is None and d.account("3003").subscriber is None


def test_a_flat_that_is_no_number_in_a_building_split_by_flat_is_named() -> None:
    d, problems = build(
        "account,phones,address,flat,ip\n"
        "3101,+79210000011,пр-т Мира 10,abc,\n"
        "3102,+79210000012,пр-т Мира 10,-3,\n"
        "3103,+79210000013,пр-т Мира 10,12а,\n"
        "3104,+79210000014,пр-т Мира 10,55/1,\n"
    )
    # A flat with a letter or part is in its number's part, as /check places it.
    assert d.account("3103").nodes == ("seg-1",) and d.account("3104").nodes == ("seg-2",)
    assert d.address("Мира 10", flat="12а").nodes == ("seg-1",)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "row 2: address 'пр-т Мира, д. 10' is split between seg-1, seg-2 by flat number, "
        "and flat 'abc' is not a number.",
        "row 3: address 'пр-т Мира, д. 10' is split between seg-1, seg-2 by flat number, "
        "and flat '-3' is not a number.",
    ], problems


def test_a_file_separated_by_semicolons_or_tabs_is_told_so() -> None:
    for sep, said in ((";", "';'"), ("\t", "tabs")):
        header = sep.join(["account", "phones", "address", "flat", "ip"])
        row = sep.join(["3201", "+79210000021", "ул. Ленина 5", "1", ""])
        _, problems = build(f"{header}\n{row}\n")
        assert problems == [
            f"{PATH}: the header lacks column(s) account, phones, address, flat, ip (its "
            f"fields are separated by {said}: the file must be comma-separated); it must name "
            "account,phones,address,flat,ip."
        ], problems


def test_a_row_with_a_bad_phone_is_left_out_like_every_row_with_a_problem() -> None:
    d, problems = build(
        "account,phones,address,flat,ip\n"
        "2001,abc,ул. Ленина 5,1,\n"
        "2002,+79210000002;12,ул. Ленина 5,2,\n"
        "2003,+79210000003,ул. Ленина 5,3,\n"
    )
    assert [p.split(": ", 1)[1] for p in problems] == [
        "row 2: phones: 'abc' is not a phone number.",
        "row 3: phones: '12' is not a phone number.",
    ]
    assert d.account("2001") == directory.NOT_FOUND
    assert d.account("2002") == directory.NOT_FOUND
    assert d.phone("+79210000002") == directory.NOT_FOUND
    assert d.account("2003") != directory.NOT_FOUND
    assert len(d.subscribers) == 1


def test_a_header_without_the_columns_is_one_problem() -> None:
    subs, problems = directory.parse_csv("acct,phone\n1,2\n", PATH, TOPO)
    assert subs == []
    assert problems == [
        f"{PATH}: the header lacks column(s) account, phones, address, flat, ip; "
        "it must name account,phones,address,flat,ip."
    ]


CITY = citygen.generate(aggregations=3, access_per_aggregation=20, subscribers_per_access=5)
CITY_DIR: Directory | None = None


def city() -> Directory:
    global CITY_DIR
    if CITY_DIR is None:
        t = topology.parse_text(CITY.topology_yaml(), Path("city.yaml"))
        subs, problems = directory.parse_csv(CITY.subscribers_csv(), PATH, t)
        assert problems == []
        CITY_DIR = Directory(directory.with_cpes(t, subs), subs)
    return CITY_DIR


# No deadline: the first example loads the generated city, which on a busy machine takes
# longer than hypothesis's 200 ms; lookup speed is measured by benchmarks.directory_bench.
@settings(max_examples=100, deadline=None)
@given(st.data())
def test_every_served_address_of_a_generated_city_finds_its_node(data: st.DataObject) -> None:
    d = city()
    node = data.draw(st.sampled_from([n for n in d.topology.nodes.values() if n.serves]))
    served = data.draw(st.sampled_from(node.serves))
    flat = str(served.flats[0][0]) if served.flats else ""
    m = d.address(served.address.text(), flat=flat)
    assert node.id in m.nodes


@settings(max_examples=100, deadline=None)  # the first example loads the city
@given(st.data())
def test_every_subscriber_of_a_generated_city_is_found_by_phone_and_account(
    data: st.DataObject,
) -> None:
    d = city()
    row = data.draw(st.sampled_from(CITY.rows))
    by_phone = d.phone(row[1])
    assert by_phone.subscriber is not None and by_phone.subscriber.account == row[0]
    assert d.account(row[0]).nodes == by_phone.nodes


def test_every_subscriber_with_an_ip_becomes_one_router_under_their_serving_node() -> None:
    # Rows without an ip between rows with one: the routers are taken from the columns
    # in step, so a router must carry its own account's id, ip and uplink.
    subs, problems = directory.parse_csv(
        CSV + '1006,,"ул. Садовая 3",2,\n1007,,"ул. Ленина, д. 5",3,127.0.1.7\n', PATH, TOPO
    )
    assert problems == []
    t = directory.with_cpes(TOPO, subs)
    routers = {n.id: n for n in t.nodes.values() if n.kind == "cpe"}
    expected = {
        f"cpe:{s.account}": (s.ip, (s.serving,)) for s in subs if s.ip is not None
    }  # fmt: skip
    assert {i: (n.ip, n.parents) for i, n in routers.items()} == expected
    assert all(n.name == n.id and n.line == 0 and not n.children for n in routers.values())
    assert {t.by_ip[ip] for ip, _ in expected.values()} == set(expected)
    assert set(TOPO.nodes) | set(expected) == set(t.nodes)
    # Made by map() from C with every field given: the one labels dict all routers share.
    assert all(n.labels is topology.NO_LABELS and n.serves == () for n in routers.values())


def test_routers_read_with_more_ips_or_accounts_than_the_other_are_refused() -> None:
    # The routers' ids, ips and uplinks are taken in step (zip's strict check, done
    # after map() made them): one short is an error, never a router given another's ip.
    subs, _ = directory.parse_csv(CSV, PATH, TOPO)
    made = directory._Routers()
    with_ip = [s for s in subs if s.ip is not None]
    made.ids = ["\n".join(f"cpe:{s.account}" for s in with_ip)]
    made.ips = ["\n".join(s.ip or "" for s in with_ip[:-1])]
    with pytest.raises(ValueError):
        directory.with_cpes(TOPO, subs, made)
    made.ids = ["\n".join(f"cpe:{s.account}" for s in with_ip[:-1])]
    made.ips = ["\n".join(s.ip or "" for s in with_ip)]
    with pytest.raises(ValueError):
        directory.with_cpes(TOPO, subs, made)


def test_freed_memory_is_kept_while_loading_and_given_back_as_by_default_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # glibc's top pad raised for the load (its chunks' buffers not given back and faulted
    # in again chunk after chunk), and its default again after, also when the load fails.
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(directory, "_MALLOPT", lambda what, value: calls.append((what, value)))
    (tmp_path / "t.yaml").write_text(
        "nodes:\n  - {id: sw, kind: access, ip: 127.0.0.3, serves: ['ул. Ленина, д. 5']}\n",
        encoding="utf-8",
    )
    (tmp_path / "s.csv").write_text(
        "account,phones,address,flat,ip\n1,+79210000001,Ленина 5,1,127.0.1.1\n", encoding="utf-8"
    )
    pad = directory._M_TOP_PAD
    for subscribers in (tmp_path / "s.csv", tmp_path / "missing.csv"):
        calls.clear()
        try:
            directory.load(tmp_path / "t.yaml", subscribers)
        except TopologyError:
            assert subscribers.name == "missing.csv"
        kept = [value for what, value in calls if what == pad]
        assert kept == [directory.KEPT_WHILE_LOADING, directory.TOP_PAD], calls


def test_free_memory_is_given_back_where_the_c_library_can() -> None:
    # glibc's malloc_trim is found where it exists (the daemon's platform); elsewhere
    # there is nothing to call and nothing fails.
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert directory._TRIM is not None
    directory.release_free_memory()


def test_a_million_entry_list_grows_in_pages_of_its_own_once_loading_has_begun() -> None:
    # A list of a million grown inside glibc's heap is copied whole at each growth, in one
    # call that holds the interpreter's lock (and a reload's event loop) for 15-25 ms;
    # in pages of its own it grows by mremap(). Freeing a 16 MiB block first is what
    # raised glibc's threshold (a load frees many) and put such a list in the heap.
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    directory.map_large_blocks()
    big = bytearray(16 << 20)
    del big
    grown: list[int] = []
    for i in range(1_000_000):
        grown.append(i)
    # PyListObject: refcount, type, size, then the pointer to its entries.
    items = ctypes.c_void_p.from_address(id(grown) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    assert items is not None
    with open("/proc/self/maps") as maps:
        heap = [line for line in maps if line.rstrip().endswith("[heap]")]
    for line in heap:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        assert not start <= items < end, "the list's entries are in glibc's heap"


def test_a_crm_export_with_a_bom_crlf_and_a_line_break_in_a_quoted_field(
    tmp_path: Path,
) -> None:
    # Rows are numbered as the CSV's records (a quoted field may span lines), the BOM is
    # no part of the first column's name, and CRLF endings leave nothing in the fields.
    topo = tmp_path / "topology.yaml"
    topo.write_text(
        "nodes:\n"
        "  - {id: core, kind: core, ip: 127.0.0.2}\n"
        "  - {id: sw, kind: access, ip: 127.0.0.3, parents: [core],\n"
        '     serves: ["ул. Садовая, д. 3", "ул. Ленина, д. 5"]}\n',
        encoding="utf-8",
    )
    subs = tmp_path / "subscribers.csv"
    subs.write_bytes(
        "\ufeffaccount,phones,address,flat,ip\r\n"
        '3001,"+7 921 000-00-01","ул. Садовая, д. 3",1,127.0.1.1\r\n'
        '3002,+79210000002,"ул. Садовая,\r\nд. 3",2,\r\n'
        "3003,+79210000003,ул. Ленина 5,3,\r\n"
        "3004,+79210000004,ул. Ленина 5,4,not-an-ip\r\n".encode()
    )
    loaded = directory.load(topo, subs)
    d = loaded.directory
    assert [s.account for s in d.subscribers] == ["3001", "3003"]
    assert [(s.row, s.flat, s.ip) for s in d.subscribers] == [(2, "1", "127.0.1.1"), (4, "3", None)]
    assert d.phone("+79210000001").nodes == ("cpe:3001",)
    assert d.topology.nodes["cpe:3001"].ip == "127.0.1.1"
    assert len(loaded.problems) == 2, loaded.problems
    assert loaded.problems[0].startswith(f"{subs}: row 3: address holds a carriage return")
    assert loaded.problems[1] == f"{subs}: row 5: ip 'not-an-ip' is not an IP address."


@pytest.mark.parametrize("rows", [
    # Two routers at one ip, no account twice: found by the routers' own address map.
    ["1,+79210000001,Ленина 5,1,127.0.1.1", "2,+79210000002,Ленина 5,2,127.0.1.2",
     "3,+79210000003,Ленина 5,3,127.0.1.1", "4,+79210000004,Ленина 5,4,127.0.1.2",
     "5,+79210000005,Ленина 5,5,127.0.1.5"],
    # An account and an ip twice, each decided in row order: the ip of row 3 is left out,
    # so its account's next row stays; account 1 again is left out.
    ["1,+79210000001,Ленина 5,1,127.0.1.1", "2,+79210000002,Ленина 5,2,127.0.1.1",
     "2,+79210000003,Ленина 5,3,127.0.1.3", "1,+79210000004,Ленина 5,4,"],
    # An account twice, every ip once.
    ["1,+79210000001,Ленина 5,1,127.0.1.1", "1,+79210000002,Ленина 5,2,127.0.1.2",
     "3,+79210000003,Ленина 5,3,127.0.1.3"],
])  # fmt: skip
def test_a_file_with_an_account_or_a_router_s_ip_twice_loads_as_read_rows_reads_it(
    tmp_path: Path, rows: list[str]
) -> None:
    # load() leaves the routers' ips to the topology's address map, which finds two at
    # one ip: the roster is then checked whole and the routers made again, so the file
    # loads as the row-by-row reading (parse_csv) reads it, with each ip once.
    (tmp_path / "t.yaml").write_text(
        "nodes:\n  - {id: sw, kind: access, ip: 127.0.0.3, serves: ['ул. Ленина, д. 5']}\n",
        encoding="utf-8",
    )
    text = "account,phones,address,flat,ip\n" + "\n".join(rows) + "\n"
    (tmp_path / "s.csv").write_text(text, encoding="utf-8")
    loaded = directory.load(tmp_path / "t.yaml", tmp_path / "s.csv")
    topo = topology.load(tmp_path / "t.yaml")
    subs, problems = directory.parse_csv(text, tmp_path / "s.csv", topo)
    assert problems and loaded.problems == problems
    d = loaded.directory
    assert list(d.subscribers) == subs
    routers = {f"cpe:{s.account}": s.ip for s in subs if s.ip}
    assert {n.id: n.ip for n in d.topology.nodes.values() if n.kind == "cpe"} == routers
    assert not d.topology.by_ip.repeated
    assert {ip: n for ip, n in d.topology.by_ip.items() if n.startswith("cpe:")} == {
        ip: n for n, ip in routers.items()
    }


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)  # rosters built per example: slow when busy
@given(
    st.lists(
        st.tuples(
            _DIGITS,  # account (duplicates too: the first is found)
            st.lists(_DIGITS.map("+7921000".__add__), max_size=3),  # phones, shared too
            st.sampled_from(sorted(TOPO.served)),
            st.sampled_from(["", "1", "12", "кв"]),
            st.booleans(),  # a probed router
        ),
        max_size=12,
    ),
    st.lists(_DIGITS.map("+7921000".__add__) | _DIGITS, max_size=4),
)
def test_the_rosters_inline_reads_and_searches_are_the_plain_ones(
    rows: list[tuple[str, list[str], str, str, bool]], asked: list[str]
) -> None:
    # Roster.at, by_phone and by_account read the columns and the packed index inline:
    # each against a Subscriber as given and a scan of every subscriber.
    subs = [
        directory.Subscriber(account, tuple(phones), TOPO.served[key][0][0].address, flat,
                             f"127.0.2.{n}" if ip else None, TOPO.served[key][0][1], n + 2)
        for n, (account, phones, key, flat, ip) in enumerate(rows)
    ]  # fmt: skip
    roster = directory.Roster.of(subs)
    assert [roster.at(i) for i in range(len(subs))] == list(roster) == subs
    for text in [*asked, *(p for s in subs for p in s.phones), *(s.account for s in subs)]:
        # one entry a number given (a number given twice is found twice, as it always was)
        given_by = [i for i, s in enumerate(subs) for p in s.phones if p == text]
        assert roster.by_phone(text) == given_by
        first = next((i for i, s in enumerate(subs) if s.account == text), None)
        assert roster.by_account(text) == first


@settings(max_examples=50, deadline=None)  # two directories built: slow on a busy machine
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ул. Ленина, д. 5", "Ленина 5", "ленина 5к2", "Мира 10",
                             "пр-т Мира, д. 10 кв. 50", "Садовая 3", "Садоввая 3", "Линина 5",
                             "Мира 11", "нет такого", ""]),
            st.sampled_from(["", "12", "50", " 7 ", "кв"]),
        ),
        max_size=12,
    ),
    st.integers(1, 4),
)  # fmt: skip
def test_a_remembered_address_is_answered_as_a_new_directory_answers_it(
    asked: list[tuple[str, str]], kept: int
) -> None:
    # Each question in turn, the same words again with other flats, the memory full and
    # emptied on the way (`kept` entries): every answer as a directory that never saw
    # the words gives.
    d, _ = build()
    fresh, _ = build()
    saved = directory._WRITTEN_KEPT
    directory._WRITTEN_KEPT = kept
    try:
        for text, flat in asked + asked:
            fresh._written.clear()  # nothing remembered: the words parsed and matched now
            assert d.address(text, flat) == fresh.address(text, flat)
            assert len(d._written) <= kept
    finally:
        directory._WRITTEN_KEPT = saved


def test_a_bucketed_index_searches_each_hash_in_its_bucket_and_finds_what_the_whole_does() -> None:
    # Buckets by the hash's top bits: each starts at its first key, and a text's entries
    # (duplicates and 32-bit collisions included) all lie in the bucket its hash names.
    texts = [f"+7921{i:07d}" for i in range(3000)] + ["+79210000007", "+79210002999"]
    whole = directory.HashIndex(texts, range(len(texts)), len(texts))
    index = directory.HashIndex(texts, range(len(texts)), len(texts)).bucketed()
    keys, starts = index.keys, index.starts
    assert len(starts) == (1 << (32 - index.shift)) + 1 > 256 and starts[-1] == len(keys)
    for bucket in range(len(starts) - 1):
        bound = float(bucket << index.shift << 21)
        assert starts[bucket] == bisect.bisect_left(keys, bound)
    for i, key in enumerate(keys):
        assert starts[(int(key) >> 21) >> index.shift] <= i
    roster = directory.Roster.of(
        directory.Subscriber(f"a{i}", (p,), TOPO.served[next(iter(TOPO.served))][0][0].address,
                             "", None, "sw-lenina", i + 2)
        for i, p in enumerate(texts)
    )  # fmt: skip
    for text in [*texts, "+79219999999", "nobody"]:
        assert roster.by_phone(text) == [i for i, p in enumerate(texts) if p == text]
        assert list(index.candidates(text)) == list(whole.candidates(text))
    assert roster.by_account("a3001") == 3001 and roster.by_account("a3002") is None


_GOOD_ROW = st.tuples(
    st.sampled_from(["1001", "1002", " 1003 "]),
    st.sampled_from(["+79211234567", "8 (921) 123-45-67", "9211234567", "+7 921 1234567",
                     "79211234567", "+12345678", ""]),
    st.sampled_from(["ул. Ленина, д. 5", "Мира 10", "пр-т Мира, д. 10 кв. 50", "ул. Садовая 3"]),
    st.sampled_from(["1", "12", "40", "41", "80", "007", " 15 "]),
    st.sampled_from(["", "127.0.1.1", "127.0.1.2", "0.0.0.0", "::1", "::FFFF:1.2.3.4"]),
).map(list)  # fmt: skip


_ODD = [  # (column, value): each sends its chunk row by row, or is read as it reads it
    *((0, v) for v in ["", " ", "1004"]),
    *((1, v) for v in ["-", "+", "()", " ", "8", "+7", "7 921 123 45 67", "+7(921)1234567",
                       "8-921-123-45-67", "921.123.45.67", "(+7) 921 1234567", "+ 7 921 1234567",
                       "+7921 +1234567", "7921123456", "89211234567", "+8 921 1234567", "٣" * 10,
                       "+" + "٣" * 10, "+79211234567;", "; +79211234567", "1;2", "12345678901",
                       "+1234567"]),
    *((2, v) for v in ["Мира 11", "нет такого", "Ленина 5", "", "Мира\x00"]),
    *((3, v) for v in ["", "81", "кв", "²", "0", "9" * 30]),
    *((4, v) for v in ["1.2.3.04", "1.2.3", "256.1.1.1", "127.0.0.3", "fe80::1", "no", " 1.2.3.4 ",
                       "::FFFF:127.0.0.3"]),
]  # fmt: skip


def _both_ways(rows: list[list[str]], plan: PhonePlan = RUSSIA) -> None:
    header = ["account", "phones", "address", "flat", "ip"]
    fast = directory.read_rows(iter([header, *rows]), PATH, TOPO, plan)
    saved = directory._at_once
    directory._at_once = lambda *args: None
    try:
        slow = directory.read_rows(iter([header, *rows]), PATH, TOPO, plan)
    finally:
        directory._at_once = saved
    assert list(fast[0]) == list(slow[0]) and fast[1] == slow[1], rows
    # The indexes made as the rows were read find what those made from the columns find.
    made = directory.Roster.of(list(fast[0]))
    asked = {t for row in rows for t in (*row[:1], *(row[1].split(";") if row[1:] else ()))}
    for text in asked | {p for s in made for p in (*s.phones, s.account)}:
        assert fast[0].by_phone(text) == made.by_phone(text) or text == "", (rows, text)
        assert fast[0].by_account(text) == made.by_account(text), (rows, text)


def test_each_odd_value_is_read_column_by_column_as_row_by_row() -> None:
    # Each odd value in a row of each building, beside a good row: the same subscribers,
    # the same sentences as the row-by-row reading.
    for address in ["ул. Ленина, д. 5", "Мира 10", "пр-т Мира, д. 10 кв. 50", "ул. Садовая 3"]:
        for column, value in _ODD:
            row = ["1001", "+79211234567", address, "41", "127.0.1.1"]
            row[column] = value
            _both_ways([["1002", "8 921 7654321", "Мира 10", "2", ""], row])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_GOOD_ROW, min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from(_ODD)), max_size=2),
    st.sampled_from([None, None, [], ["9", "", "Мира 10"], ["9", "", "Мира 10", "1", "", "x"]]),
)
def test_a_chunk_read_column_by_column_is_what_row_by_row_reads(
    rows: list[list[str]], odd: list[tuple[int, tuple[int, str]]], short: list[str] | None
) -> None:
    # read_rows takes a chunk whose rows are all good a column at a time (texts joined,
    # chains of C); any row with a problem or a rarer form sends the chunk row by row.
    # Either way the same subscribers, the same sentences.
    for row, (column, value) in odd:
        rows[row % len(rows)][column] = value
    if short is not None:
        rows.append(short)
    _both_ways(rows)


def test_good_rows_are_read_column_by_column() -> None:
    # The column-wise reading takes the usual forms (phones in four notations, a building
    # split by flat, one that is not, IPv4 and IPv6), or the test above proves nothing.
    rows = [["1", "8 (921) 123-45-67", "Мира 10", "41", "127.0.1.1"],
            ["2", "+7 921 1234567", "ул. Садовая 3", "", "::FFFF:1.2.3.4"],
            ["3", "9211234568", "ул. Ленина, д. 5", "7", ""],
            ["4", "", "Мира 10", "1", ""]]  # fmt: skip
    places = directory._Places(TOPO)
    done = directory._at_once(rows, 5, (0, 1, 2, 3, 4), places, dict(TOPO.by_ip.items()))
    assert done is not None
    _, phones, flats, ips, place = done
    assert phones == ["+79211234567", "+79211234567", "+79211234568", ""]
    assert ips == ["127.0.1.1", "::ffff:1.2.3.4", "", ""] and flats == ["41", "", "7", "1"]
    assert [places.places[p][0] for p in place] == ["seg-2", "sw-sad", "sw-lenina", "seg-1"]


@pytest.mark.parametrize("plan", [PhonePlan("1", "1", 10), PhonePlan("44", "0", 10),
                                  PhonePlan("49", "", 11)])  # fmt: skip
def test_a_numbering_plan_reads_the_same_column_by_column(plan: PhonePlan) -> None:
    # The column-wise reading gives national numbers the plan's country code, not "+7".
    written = [
        "555 010 0002",
        "1 555 010 0002",
        "0 555 010 0002",
        "44 5550100002",
        "49 55501000023",
        "5550100002 3",
        "+1 555 010 0002",
        "8 921 1234567",
        "",
    ]
    rows = [[str(i), phone, "Мира 10", str(i + 1), ""] for i, phone in enumerate(written)]
    _both_ways(rows, plan)
    places = directory._Places(TOPO)
    done = directory._at_once(rows, 5, (0, 1, 2, 3, 4), places, {}, plan)
    if done is not None:  # every number this plan reads: none of them made Russian
        assert done[1] == [plan.normalise(p) or "" for p in written]
    one = [["1", "555 010 0002" if plan.national_digits == 10 else "555 010 00023", "Мира 10",
            "1", ""]]  # fmt: skip
    done = directory._at_once(one, 5, (0, 1, 2, 3, 4), places, {}, plan)
    assert done is not None and done[1] == [f"+{plan.country_code}{one[0][1].replace(' ', '')}"]


def test_a_load_cuts_no_string_out_of_its_columns_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The indexes' keys are hashed, and the routers' ids and ips made, from the strings as
    # the file is read (a million strings cut out of each column again, and hashed again,
    # took ~1 s of a city's load): the directory answers as one built from the columns.
    (tmp_path / "t.yaml").write_text(textwrap.dedent("""
        nodes:
          - {id: core, kind: core, ip: 127.0.0.2}
          - {id: sw-mira, kind: access, ip: 127.0.0.4, parents: [core]}
          - {id: seg-1, kind: segment, parents: [sw-mira],
             serves: [{address: "пр-т Мира, д. 10", flats: "1-40"}]}
          - {id: seg-2, kind: segment, parents: [sw-mira],
             serves: [{address: "пр-т Мира, д. 10", flats: "41-80"}]}
        """), encoding="utf-8")  # fmt: skip
    rows = [f"{1000 + i},+7921{i:07d},Мира 10,{1 + i % 80},127.0.{i // 200 + 1}.{i % 200 + 1}"
            for i in range(2500)]  # fmt: skip
    rows[7] = "5007,+79210000007;8 921 999 07 77,Мира 10,3,::1"  # two numbers, IPv6
    rows[2100] = "5100,,Мира 10,45,"  # no number, no router
    rows[2200] = "5200,+79210000001,Мира 10,99,127.0.9.9"  # no such flat: left out
    (tmp_path / "s.csv").write_text("account,phones,address,flat,ip\n" + "\n".join(rows) + "\n",
                                    encoding="utf-8")  # fmt: skip

    def cut(*args: object) -> object:
        raise AssertionError("a string cut out of a column again")

    monkeypatch.setattr(directory, "_texts", cut)
    loaded = directory.load(tmp_path / "t.yaml", tmp_path / "s.csv")
    monkeypatch.undo()
    d = loaded.directory
    assert len(loaded.problems) == 1 and len(d.subscribers) == 2499
    roster = directory.Roster.of(list(d.subscribers))
    topo = directory.with_cpes(topology.load(tmp_path / "t.yaml"), roster)
    assert list(d.topology.nodes.values()) == list(topo.nodes.values())
    assert dict(d.topology.by_ip.items()) == dict(topo.by_ip.items())
    for s in roster:
        for p in (*s.phones, "+79219990777"):
            assert d.subscribers.by_phone(p) == roster.by_phone(p)
        assert d.subscribers.by_account(s.account) == roster.by_account(s.account)
    assert d.phone("8 921 999 07 77").nodes == ("cpe:5007",)


def test_a_column_of_thousands_is_kept_in_texts_of_a_span_each_and_reads_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reload's thread made each column's one text by one call into C (4-12 MiB copied
    # into new memory at a million, the event loop waiting): texts of _SPAN strings each
    # instead, read across their edges (an empty string at an edge, a router's ip or none)
    # as the strings given. Texts of 4,096 strings here: a smaller world.
    monkeypatch.setattr(directory, "_SHIFT", 12)
    monkeypatch.setattr(directory, "_SPAN", 1 << 12)
    monkeypatch.setattr(directory, "_IN_SPAN", (1 << 12) - 1)
    n = 2 * directory._SPAN + 5
    edges = {0, directory._SPAN - 1, directory._SPAN, 2 * directory._SPAN, n - 1}
    key = next(iter(TOPO.served))
    building, serving = TOPO.served[key][0][0].address, TOPO.served[key][0][1]
    subs = [
        directory.Subscriber(f"a{i}", () if i in edges else (f"+7921{i:07d}",), building,
                             "" if i in edges else str(i % 7), None if i % 3 else
                             f"127.0.{i // 250 + 1}.{i % 250 + 1}", serving, i + 2)
        for i in range(n)
    ]  # fmt: skip
    roster = directory.Roster.of(subs)
    for column in (roster.accounts, roster.phones, roster.flats, roster.ips):
        assert len(column.texts) == 3 and len(column) == n
    assert list(roster) == subs
    for size in (2000, 3):  # a load's chunks, cut at the texts' edges
        builder, flats = directory._ColumnBuilder(), [s.flat for s in subs]
        for i in range(0, n, size):
            builder.extend(flats[i : i + size])
        column = builder.done()
        assert len(column.texts) == 3 and [column[i] for i in range(n)] == flats
    assert [r[4] for r in roster.records()] == [s.ip for s in subs]
    assert directory._filled(roster.ips) == [i for i, s in enumerate(subs) if s.ip]
    for i in [*sorted(edges), 1, directory._SPAN + 1]:
        assert roster.by_account(f"a{i}") == i
        assert roster.by_phone(f"+7921{i:07d}") == ([] if i in edges else [i])
    kept = roster.without({0, directory._SPAN})
    assert list(kept) == [s for i, s in enumerate(subs) if i not in (0, directory._SPAN)]
    assert kept.by_account(f"a{directory._SPAN + 1}") == directory._SPAN - 1


def test_sorted_runs_merge_into_keys_grown_a_piece_at_a_time() -> None:
    # The merged keys are the runs' keys sorted; the pieces are not kept beside them to be
    # joined at the end (a copy of every key more, made by one call into C holding the
    # interpreter's lock, a reload's event loop beside it).
    import random
    import tracemalloc
    from array import array

    rng = random.Random(7)
    top = float((directory._HASH_MASK + 1) << directory._SLOT_BITS)
    keys = [float(int(rng.random() * top)) for _ in range(60 * directory._RUN)]
    runs: list[Sequence[float]] = [
        array("d", sorted(keys[i : i + directory._RUN]))
        for i in range(0, len(keys), directory._RUN)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        merged = directory._merged(runs)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert list(merged) == sorted(keys) and runs == []
    assert peak < 1.5 * 8 * len(keys)  # the keys once (and a piece), not twice
    assert list(directory._joined([array("I", [1, 2]), array("I"), array("I", [3])], "I")) == [
        1,
        2,
        3,
    ]


def test_the_addresses_meanings_are_freed_an_entry_at_a_time_before_the_reading_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Left to the end of _read_rows, a million subscribers' written addresses (tens of
    # thousands of _Written, each with its Address and arrays) were freed in one cascade
    # as it returned: 17-27 ms with the interpreter's lock held, a reload's loop beside it.
    made: list[directory._Places] = []

    class Kept(directory._Places):
        def __init__(self, topology: topology.Topology) -> None:
            super().__init__(topology)
            made.append(self)

    monkeypatch.setattr(directory, "_Places", Kept)
    rows = [["account", "phones", "address", "flat", "ip"],
            ["1", "", "Мира 10", "41", ""], ["2", "", "ул. Садовая 3", "", ""],
            ["3", "", "нет такого", "", ""]]  # fmt: skip
    roster, problems = directory.read_rows(iter(rows), PATH, TOPO)
    assert [s.serving for s in roster] == ["seg-2", "sw-sad"] and len(problems) == 1
    (places,) = made
    assert places.written == {} and places._index == {}
    assert {"seg-2", "sw-sad"} <= {node for node, _ in places.places}  # the roster's, kept


@pytest.mark.parametrize("count", [0, 1, 499, 500, 501, 1_999, 2_000, 2_001, 4_500])
def test_a_chunk_is_parsed_a_piece_at_a_time_and_holds_every_row_in_order(count: int) -> None:
    # The csv module's parse of a chunk, one call into C, is made a piece at a time (the
    # interpreter's lock let go between): the chunks hold the rows as before.
    rows = iter([[str(i)] for i in range(count)])
    chunks = list(iter(lambda: directory._chunk(rows), []))
    assert [len(c) for c in chunks[:-1]] == [directory.CHUNK_ROWS] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= directory.CHUNK_ROWS if count else chunks == []
    assert [r[0] for c in chunks for r in c] == [str(i) for i in range(count)]
    assert directory.CHUNK_ROWS % directory.PIECE_ROWS == 0
