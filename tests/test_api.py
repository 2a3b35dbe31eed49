"""The HTTP interface through real requests, against the app with a real store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from outagemon.core.incidents import Maintenance
from outagemon.metrics import Registry
from outagemon.monitor import Monitor
from tests.conftest import short_tmp_dir
from tests.world import READ, WRITE, world


def future(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).astimezone().isoformat()


async def test_outage_for_every_caller_behind_a_dead_aggregation(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-n")
        w.run(60)
        a = await w.check(phone="89210000001")
        assert a["status"] == "outage" and a["root_node"] == "agg-n"
        assert a["incident_id"] and a["matched_by"] == "phone"
        assert a["node"] == "sw-lenina-5" and a["address"] == "ул. Ленина, д. 5, кв. 12"
        assert "авария" in a["message"] and "улица Ленина, дом 5" in a["message"]
        assert "Работы продолжаются" in a["message"]
        b = await w.check(address="Мира 10", flat="50")
        assert (b["status"], b["incident_id"]) == ("outage", a["incident_id"])
        c = await w.check(account="1007")
        assert c["status"] == "ok" and c["incident_id"] == ""
        assert all(isinstance(v, str) for v in a.values())
        w.monitor.tick()
        await w.flushed()
        stored = await w.pool.fetchval("select state from node_state where node_id = 'agg-n'")
        assert stored == "down", "node states reach the database as they change"


async def test_eta_is_spoken_and_one_that_passed_is_never_promised(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("sw-lenina-5")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        eta = datetime.now(UTC) + timedelta(hours=2)
        w.monitor.set_eta(inc.id, eta.timestamp(), "", "noc")
        a = await w.check(account="1001")
        assert (
            f"Ориентировочно связь восстановится в {eta.astimezone():%H:%M}" in a["message"]
            or "завтра в" in a["message"]
        )
        assert a["eta"] == eta.astimezone().isoformat(timespec="seconds")
        w.monitor.set_eta(inc.id, time.time() - 600, "", "noc")  # the estimate has passed
        a = await w.check(account="1001")
        assert "Работы продолжаются" in a["message"] and "Ориентировочно" not in a["message"]


async def test_each_status_is_reached_in_english_too(fresh_db: str) -> None:
    async with world(fresh_db, language="en") as w:
        w.net.fail("agg-n")
        w.run(60)
        outage = await w.check(account="1001")
        assert outage["status"] == "outage"
        assert outage["message"].startswith("There is a network outage at улица Ленина, дом 5")
        w.net.repair("agg-n")
        w.run(30)
        restored = await w.check(account="1001")
        assert restored["status"] == "restored" and "switch your router off" in restored["message"]
        w.run(200)
        restored = await w.check(account="1001")
        assert restored["status"] == "restored" and restored["incident_id"] == outage["incident_id"]
        ok = await w.check(account="1006")
        assert ok["status"] == "ok" and ok["message"].startswith("We see no network problem")
        missing = await w.check(phone="+79999999999")
        assert missing["status"] == "not_found" and "could not find" in missing["message"]


async def test_cpe_down_is_only_the_callers_own_router(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("cpe:1002")
        w.run(120)
        mine = await w.check(account="1002")
        assert mine["status"] == "cpe_down" and "роутер не отвечает" in mine["message"]
        neighbour = await w.check(account="1003")
        assert neighbour["status"] == "ok"
        assert w.monitor.correlator.incidents == {}


async def test_a_crushed_entrance_cable_is_an_inferred_outage(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("seg-mira-1")  # three routers behind it stop answering; the switch answers
        w.run(60)
        a = await w.check(account="1002")
        assert a["status"] == "outage" and a["root_node"] == "seg-mira-1"
        assert (await w.check(account="1005"))["status"] == "ok"  # the other entrance


async def test_planned_works_answer_maintenance_with_their_end(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        async with w.session.post(
            w.url("/api/v1/maintenance"), headers=w.auth(WRITE),
            json={"node": "agg-s", "starts_at": datetime.now(UTC).isoformat(),
                  "ends_at": future(120), "reason": "замена коммутатора"},
        ) as r:  # fmt: skip
            assert r.status == 201, await r.text()
            body = await r.json()
        assert body["node"] == "agg-s" and body["nodes"] == 3
        a = await w.check(account="1007")
        assert a["status"] == "maintenance" and "плановые работы" in a["message"]
        assert (await w.check(account="1001"))["status"] == "ok"


async def test_maintenance_incident_when_the_node_fails_inside_the_window(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        now = w.net.now
        w.monitor.add_maintenance(Maintenance(1, "sw-sad-5", now, time.time() + 7200), "noc")
        w.net.fail("sw-sad-5")
        w.run(60)
        a = await w.check(account="1007")
        assert a["status"] == "maintenance" and a["incident_id"]


async def test_blind_monitor_answers_unknown(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.uplink_down = True
        w.run(120)
        a = await w.check(account="1001")
        assert a["status"] == "unknown" and "не можем проверить" in a["message"]
        async with w.session.get(w.url("/readyz")) as r:
            assert r.status == 503 and "blind" in (await r.json())["reason"]


async def test_before_the_first_round_everything_is_unknown(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.monitor.first_round_done = False
        assert (await w.check(account="1001"))["status"] == "unknown"


async def test_ambiguous_phone_and_address(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        a = await w.check(phone="+79210000002")
        assert a["status"] == "ambiguous"
        assert a["candidates"] == "пр-т Мира, д. 10, кв. 15;ул. Садовая, д. 5, кв. 10"
        b = await w.check(address="Садовая 3")
        assert b["status"] == "ambiguous" and len(b["candidates"].split(";")) == 2
        c = await w.check(address="Мира 10")  # split between entrances, no flat given
        assert c["status"] in ("ok", "ambiguous")


async def test_text_format_for_dialplans(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        async with w.session.get(w.url("/api/v1/check"), headers=w.auth(),
                                 params={"account": "1006", "format": "text"}) as r:  # fmt: skip
            assert await r.text() == f"outage|{inc.id}|\n"


async def test_answers_count_calls_on_the_incident(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        for _ in range(3):
            await w.check(account="1006")
        w.monitor.tick()
        await w.flushed()
        async with w.session.get(w.url("/api/v1/incidents"), headers=w.auth()) as r:
            (inc,) = (await r.json())["incidents"]
        assert inc["calls"] == 3 and inc["subscribers"] == 3
        assert (
            await w.pool.fetchval("select calls from incident where id = $1", int(inc["id"])) == 3
        )


@pytest.mark.parametrize("language", ["ru", "en"])
async def test_a_node_asked_by_name_hears_the_node_not_an_empty_address(
    fresh_db: str, language: str
) -> None:
    """The helpdesk's `node=`: a node has no address; the sentence names the node."""
    async with world(fresh_db, language=language) as w:
        ok = await w.check(node="agg-s", channel="helpdesk")
        assert (ok["status"], ok["address"]) == ("ok", "")
        assert (
            ok["message"]
            == {
                "ru": "На узле agg-s неисправностей в сети не обнаружено.",
                "en": "We see no network problem at node agg-s.",
            }[language]
        ), ok
        w.net.fail("agg-s")
        w.run(60)
        down = await w.check(node="agg-s", channel="helpdesk")
        assert down["status"] == "outage", down
        assert down["message"].startswith({
            "ru": "На узле agg-s сейчас авария в сети",
            "en": "There is a network outage at node agg-s.",
        }[language]), down  # fmt: skip


@pytest.mark.parametrize(
    ("params", "sentence"),
    [
        ({}, "give exactly one of phone, account, address or node (given: none)."),
        ({"phone": "1", "account": "2"}, "given: phone, account"),
        ({"account": "1", "flat": "2"}, "flat goes with address only."),
        ({"account": "1", "format": "xml"}, "format must be json or text."),
        ({"account": "1", "channel": "fax"}, "channel must be ivr or helpdesk."),
        ({"account": "1", "colour": "red"}, "unknown parameter(s): colour."),
        ({"account": "x" * 600}, "account is too long."),
    ],
)
async def test_bad_questions_get_a_400_with_a_sentence(
    fresh_db: str, params: dict[str, str], sentence: str
) -> None:
    async with (
        world(fresh_db) as w,
        w.session.get(w.url("/api/v1/check"), params=params, headers=w.auth()) as r,
    ):
        assert r.status == 400
        assert sentence in (await r.json())["error"]


async def test_auth_no_token_wrong_token_read_on_write_and_write(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        url = w.url("/api/v1/check")
        async with w.session.get(url, params={"account": "1"}) as r:
            assert r.status == 401 and "token is required" in (await r.json())["error"]
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with w.session.get(url, params={"account": "1"}, headers=w.auth("nope")) as r:
            assert r.status == 401 and "not valid" in (await r.json())["error"]
        target = w.url(f"/api/v1/incidents/{inc.id}")
        body = {"eta": future(90), "note": "бригада выехала"}
        async with w.session.post(target, json=body, headers=w.auth(READ)) as r:
            assert r.status == 403 and "may only read" in (await r.json())["error"]
        async with w.session.post(target, json=body, headers=w.auth(WRITE)) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["eta"] is not None
        await w.flushed()
        async with w.session.get(target, headers=w.auth()) as r:
            detail = await r.json()
        kinds = [e["kind"] for e in detail["timeline"]]
        assert "opened" in kinds and "eta" in kinds and "note" in kinds
        note = next(e for e in detail["timeline"] if e["kind"] == "note")
        assert note["detail"] == {"note": "бригада выехала", "by": "noc"}


async def test_without_tokens_reads_are_open_and_writes_refused(fresh_db: str) -> None:
    async with world(fresh_db, tokens=False) as w:
        async with w.session.get(w.url("/api/v1/check"), params={"account": "1001"}) as r:
            assert r.status == 200
        async with w.session.post(w.url("/api/v1/maintenance"), json={}) as r:
            assert r.status == 403 and "writes are disabled" in (await r.json())["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "sentence"),
    [
        ("/api/v1/incidents/999", {"note": "x"}, 404, "there is no incident 999."),
        ("/api/v1/incidents/abc", {"note": "x"}, 404, "is not an incident id"),
        ("/api/v1/incidents/1", {"eta": "tomorrow"}, 400, "is not an ISO 8601 time"),
        ("/api/v1/incidents/1", {"eta": "2030-01-01T10:00:00"}, 400, "has no UTC offset"),
        ("/api/v1/incidents/1", {"eta": "2001-01-01T10:00:00Z"}, 400, "eta is in the past"),
        ("/api/v1/incidents/1", {"colour": 1}, 400, "unknown field(s): colour"),
        ("/api/v1/incidents/1", [], 400, "must be a JSON object"),
        ("/api/v1/maintenance", {"node": "nope", "starts_at": "x", "ends_at": "y"}, 400,
         "node 'nope' is not in the topology."),
        ("/api/v1/maintenance", {"node": "core", "starts_at": "2030-01-02T00:00:00Z",
                                 "ends_at": "2030-01-01T00:00:00Z"}, 400,
         "ends_at must be after starts_at."),
    ],
)  # fmt: skip
async def test_bad_writes_get_a_4xx_with_a_sentence(
    fresh_db: str, path: str, body: object, status: int, sentence: str
) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        async with w.session.post(w.url(path), json=body, headers=w.auth(WRITE)) as r:
            assert r.status == status, await r.text()
            assert sentence in (await r.json())["error"]


async def test_malformed_json_and_oversized_bodies_are_4xx(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        url = w.url("/api/v1/maintenance")
        async with w.session.post(url, data=b"{nope", headers=w.auth(WRITE)) as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        async with w.session.post(url, data=b"x" * 100_000, headers=w.auth(WRITE)) as r:
            assert r.status == 413 and "too large" in (await r.json())["error"]


async def test_unknown_paths_and_methods_get_a_sentence(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        async with w.session.get(w.url("/api/v1/nope")) as r:
            assert r.status == 404 and r.content_type == "application/json"
            assert (await r.json())["error"] == "there is nothing at /api/v1/nope."
        async with w.session.post(w.url("/api/v1/check"), headers=w.auth()) as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]
            assert (await r.json())["error"] == "POST is not allowed on /api/v1/check."
        async with w.session.delete(w.url("/api/v1/incidents/1"), headers=w.auth()) as r:
            assert r.status == 405 and {"GET", "POST"} <= set(r.headers["Allow"].split(","))


async def test_incident_lists_and_one_incident(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        w.net.repair("agg-s")
        w.run(200)
        w.net.fail("agg-n")
        w.run(60)
        await w.flushed()
        get = w.session.get
        async with get(w.url("/api/v1/incidents"), headers=w.auth()) as r:
            open_ = (await r.json())["incidents"]
        async with get(w.url("/api/v1/incidents?state=resolved"), headers=w.auth()) as r:
            resolved = (await r.json())["incidents"]
        async with get(w.url("/api/v1/incidents?state=all"), headers=w.auth()) as r:
            every = (await r.json())["incidents"]
        assert [i["root_node"] for i in open_] == ["agg-n"]
        assert [i["root_node"] for i in resolved] == ["agg-s"]
        assert resolved[0]["resolved_at"] is not None and resolved[0]["state"] == "resolved"
        assert [i["root_node"] for i in every] == ["agg-n", "agg-s"]
        assert open_[0]["nodes"][0] == "agg-n" and "seg-mira-1" in open_[0]["nodes"]
        async with get(w.url("/api/v1/incidents?state=bogus"), headers=w.auth()) as r:
            assert r.status == 400


async def test_check_keeps_answering_when_the_database_stops() -> None:
    from outagemon.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(short_tmp_dir())
    dsn = await server.start()
    try:
        async with world(dsn) as w:
            w.net.fail("agg-n")
            w.run(60)
            await w.flushed()
            await server.stop()  # the database goes away mid-test
            for _ in range(20):
                a = await w.check(phone="89210000001")
                assert a["status"] == "outage" and a["root_node"] == "agg-n"
            w.net.fail("agg-s")
            w.run(60)  # detection goes on; its writes queue
            assert (await w.check(account="1007"))["status"] == "outage"
            assert w.monitor.writer is not None and len(w.monitor.writer) > 0
            await server.start()  # it comes back: the queue drains in order
            await w.flushed()
            rows = await w.pool.fetch("select root_node from incident order by id")
            assert [r["root_node"] for r in rows] == ["agg-n", "agg-s"]
    finally:
        await server.stop()


async def test_the_page_shows_open_incidents_escaped(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-n")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        w.monitor.set_eta(inc.id, None, "<script>alert(1)</script>", "noc")
        await w.flushed()
        async with w.session.get(w.url("/")) as r:
            html = await r.text()
        assert f'data-incident="{inc.id}"' in html and "agg-n" in html
        async with w.session.get(w.url(f"/incidents/{inc.id}")) as r:
            page = await r.text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>alert(1)</script>" not in page


async def test_loss_history_survives_a_restart(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.monitor.save_history()
        await w.flushed()
        before = w.monitor.correlator.states["sw-lenina-5"]
        assert before.n > 100
        again = Monitor(w.monitor.config, w.monitor.directory, Registry())
        await again.restore(w.pool)
        after = again.correlator.states["sw-lenina-5"]
        assert after.n == pytest.approx(before.n, rel=1e-3)
        assert after.lost == pytest.approx(before.lost, abs=1e-3)
