"""Defects found by the tenth new user's trial (a NOC engineer and an integrator), each pinned."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outagemon import config
from outagemon.core import directory
from outagemon.core.addresses import RUSSIA, PhonePlan, normalise_phone
from outagemon.core.health import State
from outagemon.errors import ConfigError
from tests.test_calls_api import NEIGHBOURS
from tests.test_page_form import incident_form
from tests.world import WRITE, world

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = """\
nodes:
- {id: core-1, kind: core, ip: 127.0.0.1}
- {id: sw-1, kind: access, ip: 127.0.0.2, parents: [core-1], serves: ["1 Main St"]}
"""
# A North American provider's CRM export: numbers as its staff write them.
SUBSCRIBERS = """\
account,phones,address,flat,ip
2001,(555) 010-0002,1 Main St,4,
2002,1-555-010-0003,1 Main St,5,
2003,+1 555 010 0004,1 Main St,6,
"""


def provider(tmp: Path, phones: str) -> Path:
    (tmp / "topo.yaml").write_text(TOPOLOGY)
    (tmp / "subs.csv").write_text(SUBSCRIBERS)
    path = tmp / "om.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp}"\n[topology]\nfile = "topo.yaml"\n'
                    f'subscribers = "subs.csv"\n{phones}')  # fmt: skip
    return path


def loaded(path: Path, *problems: str) -> directory.Directory:
    cfg = config.load(path)
    found = directory.load(cfg.topology.file, cfg.topology.subscribers,
                           PhonePlan.of(cfg.phones))  # fmt: skip
    assert [p.split(": ", 1)[1] for p in found.problems] == list(problems)
    return found.directory


def test_a_provider_outside_russia_finds_its_callers_by_their_national_number(
    tmp_path: Path,
) -> None:
    # `phone=5550100002` was not_found while `+15550100002` was found: a number without
    # its country code was taken as Russian (+7 555 ...), in the CRM's file and in the
    # phone menu's question alike. `[phones]` says the provider's numbering plan.
    d = loaded(provider(tmp_path, '[phones]\ncountry_code = 1\ntrunk_prefix = "1"\n'))
    for asked, account in [("5550100002", "2001"), ("+15550100002", "2001"),
                           ("15550100003", "2002"), ("(555) 010-0003", "2002"),
                           ("555.010.0004", "2003"), ("1 555 010 0004", "2003")]:  # fmt: skip
        match = d.phone(asked)
        assert match.subscriber is not None, asked
        assert match.subscriber.account == account, asked
    assert d.subscribers.at(d.subscribers.by_account("2001") or 0).phones == ("+15550100002",)


def test_check_config_says_how_numbers_without_a_country_code_are_read(tmp_path: Path) -> None:
    # A CRM's rows refused as "not a phone number" are explained by the plan in force.
    path = provider(tmp_path, "")
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr  # row 3: 1-555-010-0003
    assert ("  phones: a number without its country code is read as +7 (trunk prefix '8', "
            "10 national digits: [phones])") in done.stdout.splitlines()  # fmt: skip
    path = provider(tmp_path, '[phones]\ncountry_code = 1\ntrunk_prefix = "1"\n')
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "read as +1 (trunk prefix '1', 10 national digits" in done.stdout


def test_a_reload_reads_the_subscribers_by_the_new_numbering_plan(tmp_path: Path) -> None:
    # `[phones]` takes effect on reload: the reload's load (in its thread) reads by it.
    from outagemon import daemon

    before = daemon._prepare(config.load(provider(tmp_path, "")), None)[0]
    assert before.directory.phone("+15550100002").subscriber is None  # read as +7 555 ...
    new = config.load(provider(tmp_path, '[phones]\ncountry_code = 1\ntrunk_prefix = "1"\n'))
    after = daemon._prepare(new, None)[0]
    for asked in ("5550100002", "+15550100002"):
        found = after.directory.phone(asked).subscriber
        assert found is not None and found.account == "2001", asked
    assert after.problems == []


def test_without_phones_a_number_without_its_country_code_is_russian(tmp_path: Path) -> None:
    # The default keeps what every Russian provider's files and phone menus rely on.
    d = loaded(provider(tmp_path, ""),
               "row 3: phones: '1-555-010-0003' is not a phone number.")  # fmt: skip
    assert d.phone("+75550100002").subscriber is not None
    assert d.phone("85550100002").subscriber is not None
    assert d.phone("+15550100002").subscriber is None  # their CRM wrote it without "+1"
    assert config.load(provider(tmp_path, "")).phones == config.PhonesConfig(7, "8", 10)
    assert PhonePlan.of(config.PhonesConfig()) == RUSSIA


@pytest.mark.parametrize(
    ("plan", "written", "e164"),
    [
        (PhonePlan("44", "0", 10), "020 7946 0000", "+442079460000"),
        (PhonePlan("44", "0", 10), "44 20 7946 0000", "+442079460000"),
        (PhonePlan("44", "0", 10), "2079460000", "+442079460000"),
        (PhonePlan("44", "0", 10), "0044 20 7946 0000", None),  # 14 digits: no rule reads it
        (PhonePlan("1", "", 10), "15550100002", "+15550100002"),
        (PhonePlan("1", "", 10), "5550100002", "+15550100002"),
        (RUSSIA, "8 (921) 123-45-67", "+79211234567"),
        (RUSSIA, "7 921 123 45 67", "+79211234567"),
        (RUSSIA, "921 123 45 67", "+79211234567"),
        (RUSSIA, "6 921 123 45 67", None),
    ],
)
def test_a_numbering_plan_reads_national_numbers(plan: PhonePlan, written: str,
                                                 e164: str | None) -> None:  # fmt: skip
    assert normalise_phone(written, plan) == e164


@pytest.mark.parametrize(
    ("phones", "said"),
    [
        ("country_code = 0", "[phones] country_code must be at least 1"),
        ("country_code = 1000", "[phones] country_code must be at most 999"),
        ('country_code = "+1"', "[phones] country_code must be a whole number"),
        ('trunk_prefix = "+8"', '[phones] trunk_prefix must be the digits dialled before a '
                                'national number, as a string of at most two ("8" in Russia'),
        ("trunk_prefix = 8", "[phones] trunk_prefix must be the digits dialled"),
        ("national_digits = 3", "[phones] national_digits must be at least 4"),
        ("country_code = 998\nnational_digits = 13",
         "[phones] country_code 998 and national_digits 13 make numbers of 16 digits; an "
         "international number (E.164) has at most 15."),
        ("country = 1", "unknown key [phones] 'country' (did you mean 'country_code'?)."),
    ],
)  # fmt: skip
def test_check_config_names_a_bad_numbering_plan(tmp_path: Path, phones: str, said: str) -> None:
    path = provider(tmp_path, f"[phones]\n{phones}\n")
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr, done.stderr


def card_of(page: str, iid: str) -> str:
    """The text of an incident's card on the live page, its tags and spacing taken out."""
    card = page.split(f'data-incident="{iid}"', 1)[1].split("</div>\n</div>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", " ", card).split())


async def test_a_suspicion_card_says_who_called_and_how_many_were_told(fresh_db: str) -> None:
    # The card of a suspected incident said "from 2 callers" beside "0 calls": the first
    # is the distinct callers that raised it, the second the /check answers that named it
    # (none: its callers are not told until it is confirmed). Each now says which it is.
    async with world(fresh_db, subscribers=NEIGHBOURS) as w:
        for account in ("1020", "1021", "1022"):
            await w.check(account=account)
        w.run(2)
        (sus,) = w.monitor.open_incidents()
        async with w.session.get(w.url("/")) as r:
            card = card_of(await r.text(), str(sus.id))
        assert "from 3 callers, not confirmed" in card, card
        # Raised by calls, not inferred by the probes from its children's failures.
        assert "inferred" not in card, card
        assert "· 0 calls told of it ·" in card, card
        async with w.session.post(w.url(f"/api/v1/incidents/{sus.id}"), json={"confirm": True},
                                  headers=w.auth(WRITE)) as r:  # fmt: skip
            assert r.status == 200, await r.text()
        assert (await w.check(account="1020"))["incident_id"] == str(sus.id)
        async with w.session.get(w.url("/")) as r:
            card = card_of(await r.text(), str(sus.id))
        assert "· 1 call told of it ·" in card, card
        async with w.session.get(w.url(f"/incidents/{sus.id}")) as r:
            text = " ".join(re.sub(r"<[^>]+>", " ", await r.text()).split())
        assert "· 1 call told of it ·" in text and "3 distinct callers" in text, text
        assert "inferred" not in text.split("Timeline")[0], text


async def test_the_page_form_sent_empty_says_nothing_was_saved(fresh_db: str) -> None:
    # "Save" with neither an ETA nor a note answered "Saved." (nothing was: the API
    # refuses the same, `{}`, with "give eta and/or note.").
    async with incident_form(fresh_db) as (w, browser, inc, page, csrf):
        form = {"token": WRITE, "csrf": csrf, "eta": "", "note": "  "}
        async with browser.post(page, data=form) as shown:
            said = re.search(r'<p class="card message">(.*?)</p>', await shown.text())
        assert said is not None
        assert html.unescape(said.group(1)) == "Nothing was saved: give an ETA, a note, or both."
        await w.flushed()
        rows = await w.pool.fetch("select kind from incident_event where incident_id = $1"
                                  " and kind in ('eta', 'note')", inc.id)  # fmt: skip
        assert rows == []


def test_a_refused_interval_is_not_compared_with_the_timeout_as_its_default() -> None:
    # `interval = "10"` (a string) and `timeout = 20` drew, beside the interval's own
    # problem, "timeout (20 s) must not be longer than [probe] interval (10.0 s)": an
    # interval the operator never wrote (the default put in place of the refused one).
    with pytest.raises(ConfigError) as refused:
        config.parse('[probe]\ninterval = "10"\ntimeout = 20\n', Path("/etc/om.toml"))
    assert refused.value.problems == [
        "/etc/om.toml: [probe] interval must be a number of seconds, not '10'."
    ]
    with pytest.raises(ConfigError) as longer:
        config.parse("[probe]\ntimeout = 20\n", Path("/etc/om.toml"))
    assert longer.value.problems == [
        "/etc/om.toml: [probe] timeout (20 s) must not be longer than [probe] interval (10.0 s)."
    ]


async def test_a_withheld_number_is_said_to_be_empty_not_missing(fresh_db: str) -> None:
    # A phone menu sends `phone=` for a caller who withholds their number; the 400 said
    # "(given: none)", as if the menu had sent no parameter at all.
    async with world(fresh_db) as w:
        for query, said in [
            ("phone=", "(given: none; phone is empty)."),
            ("phone=%20&account=", "(given: none; phone and account are empty)."),
        ]:
            async with w.session.get(w.url(f"/api/v1/check?{query}"), headers=w.auth()) as r:
                assert r.status == 400
                error = (await r.json())["error"]
            assert error == f"give exactly one of phone, account, address or node {said}", query
        # An empty one beside one given is no question of the menu's: the given one answers.
        async with w.session.get(w.url("/api/v1/check?phone=&account=1001"), headers=w.auth()) as r:
            assert r.status == 200 and (await r.json())["matched_by"] == "account"


def test_a_repaired_switch_and_what_it_cut_off_are_not_called_degraded() -> None:
    # After agg-2 was repaired the page listed agg-2 and every node behind it under "Other
    # nodes down or degraded", each with ~20 % loss, for minutes: the short loss history
    # (what "degraded" is measured on) still held the probes lost during the outage.
    from tests.test_correlate import city, sim

    s = sim(city(aggs=2, access=5, cpes=2))
    s.fail("agg0")
    s.run_for(120)
    assert s.correlator.state_of("agg0") is State.DOWN
    s.repair("agg0")
    s.run_for(30)
    behind = ["agg0", *(n for n in s.correlator.states if n.startswith(("sw0-", "cpe0-")))]
    assert all(s.correlator.state_of(n) is State.UP for n in behind)
    assert [n for n in behind if s.correlator.states[n].degraded] == []
    # A link that loses a third of its probes while up is still degraded.
    s.loss["agg1"] = 0.35
    s.run_for(600)
    assert s.correlator.states["agg1"].degraded


def test_the_reports_charts_say_one_incident_in_the_singular() -> None:
    # The reports page's titles read "1 incidents" and "up to 1 incidents open".
    from outagemon.http import charts

    place = {"key": "ул. Ленина, д. 5", "outage_minutes": 2.5, "planned_minutes": 0.0,
             "incidents": 1, "availability_pct": 99.8}  # fmt: skip
    assert "0 min planned works, 1 incident, 99.8 % available" in charts.worst([place], "nodes")
    bucket = {"at": "2026-12-01T00:30:00+00:00", "calls_per_minute": 0.2, "open_incidents": 1}
    drawn = charts.calls([bucket], 1764548100.0, 1764549900.0, 900.0)
    assert "0.2 calls a minute, 1 incident open" in drawn, drawn
    assert "up to 1 incident open" in drawn


def test_reload_of_the_demo_says_it_is_the_demo_not_a_stale_pid_file(tmp_path: Path) -> None:
    # `outagemon reload -c` with the demo's printed config said "its daemon.pid is stale;
    # process N (python outagemon demo ...) is not an outagemon daemon": the demo was
    # running, and its pid file was not stale.
    from outagemon import reloading

    demo = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "outagemon", "demo", "--port", "18099"])  # fmt: skip
    try:
        (tmp_path / "topo.yaml").write_text(TOPOLOGY)
        cfg = tmp_path / "om.toml"
        cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n[topology]\nfile = "topo.yaml"\n')
        (tmp_path / reloading.PID_FILE).write_text(f"{demo.pid}\n")
        done = subprocess.run([sys.executable, "-m", "outagemon", "reload", "-c", str(cfg),
                               "--timeout", "2"], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)  # fmt: skip
        assert done.returncode == reloading.NOT_A_DAEMON, done.stdout + done.stderr
        assert done.stderr == (
            f"outagemon reload: {tmp_path} is the state of `outagemon demo --port 18099` "
            f"(process {demo.pid}), the demo, which takes no reload: `outagemon reload` "
            "signals only an `outagemon run` daemon. Nothing was signalled.\n"
        )
        assert demo.poll() is None, "the demo was signalled"
    finally:
        demo.kill()
        demo.wait()


async def test_the_page_of_works_to_come_says_callers_hear_of_them_only_from_their_start(
    fresh_db: str,
) -> None:
    # The page of works booked for later said "Callers behind sw-mira-10 hear of planned
    # works.": until the works start they hear what the probes see (usually "ok").
    from tests.test_maintenance_api import declare

    async with world(fresh_db) as w:
        soon = datetime.now(UTC) + timedelta(hours=1)
        wid = await declare(w, "sw-mira-10", soon.isoformat(),
                            (soon + timedelta(hours=2)).isoformat())  # fmt: skip
        assert (await w.check(address="Мира 10", flat="20"))["status"] == "ok"
        async with w.session.get(w.url(f"/maintenance/{wid}")) as r:
            text = " ".join(re.sub(r"<[^>]+>", " ", await r.text()).split())
        assert "Callers behind sw-mira-10 will hear of planned works from " in text, text
        assert "; until then they hear what the probes see." in text, text
        assert "hear of planned works now" not in text


def test_a_subscribers_file_in_windows_1251_is_named_as_not_utf8(tmp_path: Path) -> None:
    # A spreadsheet's CSV export in Windows-1251 (the usual one for Cyrillic) was said as
    # "cannot be read: 'utf-8' codec can't decode byte 0xf3 in position 74: invalid
    # continuation byte." (a position in a buffer, not in the file).
    path = provider(tmp_path, "")
    text = SUBSCRIBERS.replace("1 Main St", "ул. Ленина, д. 5")
    (tmp_path / "subs.csv").write_bytes(text.encode("cp1251"))
    (tmp_path / "topo.yaml").write_text(TOPOLOGY.replace("1 Main St", "ул. Ленина, д. 5"))
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        f"[topology] subscribers {tmp_path}/subs.csv: is not UTF-8 text (byte 0xf3 is no "
        "UTF-8 there); save it as UTF-8: an export or an editor may have written it in "
        "another encoding, such as Windows-1251 (`iconv -f cp1251 -t utf-8 FILE > NEW` "
        "converts it).\n"
    )
    (tmp_path / "topo.yaml").write_bytes(TOPOLOGY.replace("1 Main St", "Ленина 5").encode("cp1251"))
    done = subprocess.run([sys.executable, "-m", "outagemon", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert f"[topology] file {tmp_path}/topo.yaml: is not UTF-8 text" in done.stderr


async def test_the_reports_page_totals_say_one_incident_and_one_call(fresh_db: str) -> None:
    # "1 incidents (1 outages, 0 planned works) · ... · 1 calls answered by the phone menu".
    from tests.test_reports import reports_totals_after, reports_world

    async with reports_world(fresh_db) as w:
        one = (2001, "outage", "resolved", "sw-lenina-5", ["sw-lenina-5"], 0, 30, None, 1, 1,
               0.75, None, None)  # fmt: skip
        _, said = await reports_totals_after(w, one)
        assert said.startswith("1 incident (1 outage, 0 planned works) · "), said
        assert said.endswith(" · 1 call answered by the phone menu"), said


def test_the_listening_address_is_logged_as_host_and_port() -> None:
    # The log line showed "('127.0.0.1', 18410)", a Python tuple.
    from outagemon import daemon

    assert daemon._address(("127.0.0.1", 18410)) == "127.0.0.1:18410"
    assert daemon._address(("::1", 8080, 0, 0)) == "[::1]:8080"
    assert daemon._address("/run/outagemon/http.sock") == "/run/outagemon/http.sock"


def test_the_inferred_badge_is_the_probes_only() -> None:
    # One rule for the live card and the incident page (`_inferred_badge`): the probes'
    # inference is badged, an incident raised by calls (inferred from no probe) is not.
    from outagemon.http import page

    assert page._inferred_badge(True, "probes") and page._inferred_badge(True, None)
    assert not page._inferred_badge(True, "calls") and not page._inferred_badge(False, None)
