"""The OpenAPI description stays true: real responses validate against it, and requests
generated from it (hypothesis) never produce a 5xx."""

from __future__ import annotations

import string
from typing import Any

import aiohttp
import jsonschema
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
                                  json={"node": "core", "starts_at": "2030-01-01T00:00:00Z",
                                        "ends_at": "2030-01-02T00:00:00Z"})  # fmt: skip
        assert status == 201
        validate("/api/v1/maintenance", "post", status, body)
        status, body = await call(w, "get", "/api/v1/openapi.json")
        assert status == 200 and body == SPEC


TEXT = st.text(alphabet=string.printable + "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВ№",
               max_size=40)  # fmt: skip
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

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(
            st.sampled_from(["check", "incidents", "incident", "update", "maintenance"]),
            CHECK_PARAMS, BODIES, st.sampled_from([READ, WRITE, "bad", ""]),
            st.sampled_from([str(inc.id), "0", "abc", "99999999999999999999"]),
        )  # fmt: skip
        def plan(kind: str, params: dict[str, str], body: Any, token: str, iid: str) -> None:
            seen.append((kind, iid, params, body, token))

        plan()
        async with aiohttp.ClientSession() as session:
            for kind, iid, params, body, token in seen:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                described, path, method = {
                    "check": ("/api/v1/check", "/api/v1/check", "get"),
                    "incidents": ("/api/v1/incidents", "/api/v1/incidents", "get"),
                    "incident": ("/api/v1/incidents/{id}", f"/api/v1/incidents/{iid}", "get"),
                    "update": ("/api/v1/incidents/{id}", f"/api/v1/incidents/{iid}", "post"),
                    "maintenance": ("/api/v1/maintenance", "/api/v1/maintenance", "post"),
                }[kind]
                kw: dict[str, Any] = {"params": params, "headers": headers}
                if method == "post":
                    kw["json"] = body
                async with session.request(method, w.url(path), **kw) as r:
                    assert r.status < 500, (kind, params, body, await r.text())
                    payload = await r.json() if r.content_type == "application/json" else None
                    if payload is not None:
                        validate(described, method, r.status, payload)
