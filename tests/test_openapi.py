"""The OpenAPI description stays true: real responses validate against it, and requests
generated from it (hypothesis) never produce a 5xx."""

from __future__ import annotations

import string
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jsonschema
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outagemon.http.openapi import spec
from tests.world import READ, WRITE, World, world

SPEC = spec()


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    return schema  # the spec has no $ref: schemas are inlined


def validate(path: str, method: str, status: int, body: Any) -> None:
    operation = SPEC["paths"][path][method]
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method.upper()} {path} answered {status}, not described"
    content = response.get("content", {})
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        jsonschema.validate(body, _openapi_to_jsonschema(schema))


def _openapi_to_jsonschema(schema: Any) -> Any:
    """OpenAPI 3.0's `nullable` is not JSON Schema; translate it."""
    if isinstance(schema, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in schema.items() if k != "nullable"}
        if schema.get("nullable"):
            out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(schema, list):
        return [_openapi_to_jsonschema(v) for v in schema]
    return schema


async def call(w: World, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with w.session.request(method, w.url(path), **kw) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


def soon(days: int) -> str:
    """A time `days` ahead (requests' times are bounded to a year ahead)."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


async def test_real_responses_match_the_description(fresh_db: str) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-n")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        auth = w.auth()
        cases: list[tuple[str, str, str, dict[str, Any]]] = [
            ("get", "/api/v1/check", "/api/v1/check", {"params": {"account": "1001"}}),
            ("get", "/api/v1/check", "/api/v1/check", {"params": {"phone": "+79210000002"}}),
            ("get", "/api/v1/check", "/api/v1/check", {"params": {}}),
            ("get", "/api/v1/incidents", "/api/v1/incidents", {"params": {"state": "all"}}),
            ("get", "/api/v1/incidents/{id}", f"/api/v1/incidents/{inc.id}", {}),
            ("get", "/api/v1/incidents/{id}", "/api/v1/incidents/4242", {}),
        ]
        for method, described, path, kw in cases:
            status, body = await call(w, method, path, headers=auth, **kw)
            validate(described, method, status, body)
        status, body = await call(w, "post", f"/api/v1/incidents/{inc.id}",
                                  headers=w.auth(WRITE), json={"note": "ok"})  # fmt: skip
        assert status == 200
        validate("/api/v1/incidents/{id}", "post", status, body)
        status, body = await call(w, "post", "/api/v1/maintenance", headers=w.auth(WRITE),
                                  json={"node": "core", "starts_at": soon(1),
                                        "ends_at": soon(2)})  # fmt: skip
        assert status == 201
        validate("/api/v1/maintenance", "post", status, body)
        wid = body["id"]
        status, body = await call(w, "get", "/api/v1/maintenance", headers=auth)
        assert status == 200 and [x["id"] for x in body["maintenance"]] == [wid]
        validate("/api/v1/maintenance", "get", status, body)
        for change in ({"ends_at": soon(3)}, {"withdraw": True}, {"withdraw": True}):
            status, body = await call(w, "post", f"/api/v1/maintenance/{wid}",
                                      headers=w.auth(WRITE), json=change)  # fmt: skip
            validate("/api/v1/maintenance/{id}", "post", status, body)
        assert status == 404  # withdrawn already
        status, body = await call(w, "get", "/api/v1/openapi.json")
        assert status == 200 and body == SPEC


# All of Unicode, lone surrogates and NUL included, and more often the characters that
# have broken servers: digits that are not 0-9 ("²" passes str.isdigit(), not int()).
TRICKY = "²³¹½١٢۳߀०௧\x00\ud800\udfff\uffff\ufeff\u2028\u202e\U0001f600"
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.printable + "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВ№"),
        st.sampled_from(TRICKY),
        st.characters(exclude_categories=()),
    ),
    max_size=40,
)


def encoded(text: str) -> str:
    """Percent-encoded UTF-8, a lone surrogate as the bytes a careless client sends."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def query(params: dict[str, str]) -> str:
    return "&".join(f"{encoded(k)}={encoded(v)}" for k, v in params.items())


CHECK_PARAMS = st.dictionaries(
    st.sampled_from(["phone", "account", "address", "flat", "node", "format", "call_id",
                     "channel", "state", "x"]),
    TEXT, max_size=4,
)  # fmt: skip
BODIES = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["eta", "note", "node", "starts_at", "ends_at", "reason", "z"]),
                    st.one_of(TEXT, st.integers(), st.none(), st.booleans()), max_size=4),
    st.lists(st.integers(), max_size=3),
    TEXT,
)  # fmt: skip


async def test_generated_requests_never_get_a_5xx_and_match_the_description(
    fresh_db: str,
) -> None:
    async with world(fresh_db) as w:
        w.net.fail("agg-s")
        w.run(60)
        (inc,) = w.monitor.correlator.incidents.values()
        seen: list[tuple[str, str, dict[str, str], Any, str]] = []

        @settings(max_examples=250, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(
            st.sampled_from(["check", "incidents", "incident", "update", "maintenance",
                             "index", "page", "page_form", "login", "login_form"]),
            CHECK_PARAMS, BODIES, st.sampled_from([READ, WRITE, "bad", "", "токен"]),
            st.one_of(st.sampled_from([str(inc.id), "0", "abc", "99999999999999999999", "²"]),
                      TEXT),
        )  # fmt: skip
        def plan(kind: str, params: dict[str, str], body: Any, token: str, iid: str) -> None:
            seen.append((kind, iid, params, body, token))

        plan()
        async with aiohttp.ClientSession() as session:
            for kind, iid, params, body, token in seen:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                one = encoded(iid)
                described, path, method = {
                    "check": ("/api/v1/check", "/api/v1/check", "get"),
                    "incidents": ("/api/v1/incidents", "/api/v1/incidents", "get"),
                    "incident": ("/api/v1/incidents/{id}", f"/api/v1/incidents/{one}", "get"),
                    "update": ("/api/v1/incidents/{id}", f"/api/v1/incidents/{one}", "post"),
                    "maintenance": ("/api/v1/maintenance", "/api/v1/maintenance", "post"),
                    "index": ("", "/", "get"),
                    "page": ("", f"/incidents/{one}", "get"),
                    "page_form": ("", f"/incidents/{one}", "post"),
                    "login": ("", "/login", "get"),
                    "login_form": ("", "/login", "post"),
                }[kind]
                url = yarl.URL(w.url(path) + ("?" + query(params) if params else ""),
                               encoded=True)  # fmt: skip
                kw: dict[str, Any] = {"headers": headers, "allow_redirects": False}
                if kind in ("update", "maintenance"):
                    kw["json"] = body
                elif method == "post":  # a page's form, urlencoded as a browser sends it
                    fields = dict(params, token=token) if isinstance(body, dict) else params
                    kw["data"] = query(fields).encode()
                    kw["headers"] = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
                    url = yarl.URL(w.url(path), encoded=True)
                async with session.request(method, url, **kw) as r:
                    assert r.status < 500, (kind, iid, params, body, await r.text())
                    payload = await r.json() if r.content_type == "application/json" else None
                    if payload is not None and described:
                        validate(described, method, r.status, payload)
