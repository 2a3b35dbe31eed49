"""Requests aiohttp's parser refuses before any handler runs get the contract's JSON
error with a sentence that names what was wrong (http/badrequest.py): raw UTF-8 or a
raw space in the query (curl sends raw UTF-8 when the URL holds it), a control
character, a malformed header, TLS on the plain port. Sent as raw bytes over a socket,
to the daemon's own server and to a worker's fast path (tests/test_fastcheck.py's `both`).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy

from outagemon.http.badrequest import sentence
from tests.test_fastcheck import both, exchange
from tests.world import READ, world

ADDRESS = "пр-т Мира 10"
ENCODED = "address=%D0%BF%D1%80-%D1%82%20%D0%9C%D0%B8%D1%80%D0%B0%2010"
RAW_WORDS = "spaces, control characters or non-ASCII text"


def head(target: bytes, extra: bytes = b"") -> bytes:
    return (b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + READ.encode() + b"\r\n" + extra
            + b"Connection: close\r\n\r\n")  # fmt: skip


# (raw request, what its sentence must say)
CASES = [
    (head(f"/api/v1/check?address={ADDRESS}&flat=5".encode()),
     ["the query parameter 'address'", RAW_WORDS, f"percent-encode it as UTF-8: {ENCODED}."]),
    (head("/api/v1/check?address=пр-т%20Мира%2010".encode()),  # curl's: raw UTF-8, no space
     ["the query parameter 'address'", f"percent-encode it as UTF-8: {ENCODED}."]),
    (head(f"/api/v1/check?flat=5&address={ADDRESS}".encode("cp1251")),  # not UTF-8 at all
     ["the query parameter 'address'", "its bytes are not UTF-8 either", "%D0%BF"]),
    (head(b"/api/v1/check?node=core 1"), ["the query parameter 'node'", ": node=core%201."]),
    (head(b"/api/v1/check?node=\x01"), ["the query parameter 'node'", ": node=%01."]),
    (head("/api/v1/incidents/инцидент".encode()),
     ["the URL's path", "/api/v1/incidents/%D0%B8%D0%BD%D1%86%D0%B8%D0%B4%D0%B5%D0%BD%D1%82."]),
    (head(b"/api/v1/check?node=core", b"Bad Header\r\n"),
     ["the request is not valid HTTP/1.1: Invalid header token."]),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", ["the request was HTTPS (TLS)"]),
    (head(b"/api/v1/check?node=" + b"x" * 9000), ["too long (8190 bytes at most)"]),
]  # fmt: skip


def _json_error(answer: bytes) -> str:
    """The sentence of a 400 in the contract's shape; fails on anything else."""
    head_, _, body = answer.partition(b"\r\n\r\n")
    lines = head_.split(b"\r\n")
    assert lines[0].split(b" ", 2)[1] == b"400", answer
    assert b"Content-Type: application/json; charset=utf-8" in lines, answer
    said = json.loads(body)
    assert list(said) == ["error"] and isinstance(said["error"], str), said
    error: str = said["error"]
    return error


@pytest.mark.parametrize("raw,says", CASES, ids=range(len(CASES)))
async def test_a_refused_request_is_a_json_sentence_from_both_servers(
    fresh_db: str, raw: bytes, says: list[str]
) -> None:
    async with world(fresh_db, language="en") as w, both(w) as (fast, plain, site):
        ours = await exchange(fast, raw)
        theirs = await exchange(plain, raw)
        assert ours == theirs, "the fast path hands it to aiohttp's protocol: one answer"
        error = _json_error(theirs)
        for words in says:
            assert words in error, error
        assert site.answered == 0 and site.handed_over == 1


async def test_the_refused_connection_is_closed_and_the_next_one_answered(
    fresh_db: str,
) -> None:
    """What follows a refused request on its connection is never read (it cannot be
    framed reliably); a new connection is answered as ever."""
    async with world(fresh_db, language="en") as w, both(w) as (fast, plain, _):
        for port in (fast, plain):
            good = head(b"/api/v1/check?node=core")
            # exchange() reads until the server closes: one answer, the refusal
            answer = await exchange(port, CASES[0][0].replace(b"close", b"keep-alive") + good)
            assert answer.count(b"HTTP/1.") == 1 and b" 400 " in answer, answer
            assert (await exchange(port, good)).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_both_of_aiohttps_parsers_give_the_same_sentence() -> None:
    """The C parser (llhttp, used where aiohttp's extension is built) and the pure Python
    one quote the refused line differently; for a query with a raw space (or a control
    character) both refuse, the sentence is the same. (The Python parser takes raw UTF-8
    without a space: aiohttp's own difference.)"""
    loop = asyncio.get_running_loop()
    for raw, says in (CASES[0], CASES[2], CASES[3], CASES[4]):
        said = []
        for parser in (HttpRequestParserC, HttpRequestParserPy):
            p = parser(BaseProtocol(loop), loop, 2**16, max_line_size=8190,
                       max_field_size=8190)  # fmt: skip
            with pytest.raises(HttpProcessingError) as refused:
                p.feed_data(raw)
            said.append(sentence(refused.value))
        assert said[0] == said[1], said
        for words in says:
            assert words in said[0], (raw, said)
