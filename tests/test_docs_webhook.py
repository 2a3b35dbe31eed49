"""The receiver in docs/alerting.md, run as written, accepts what outagemon signs."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from outagemon import config
from outagemon.alerting import sender, signing

DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerting.md"

HOOK = """
[notify]
external_url = "https://outagemon.noc.example"
[[notify.webhooks]]
url = "https://helpdesk.example/hooks/outagemon"
secret_file = "webhook-secret"
"""


def docs_receiver() -> dict[str, Any]:
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### Verifying it (Python)") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)  # the docs' own snippet, as written
    return namespace


def test_the_docs_receiver_accepts_a_body_signed_with_a_secret_file_ending_in_a_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret_path = tmp_path / "webhook-secret"
    # The recipe the docs give: openssl writes the hex and a newline.
    with secret_path.open("wb") as f:
        subprocess.run(["openssl", "rand", "-hex", "32"], stdout=f, check=True, timeout=30)
    assert secret_path.read_bytes().endswith(b"\n")
    cfg = config.parse(HOOK, tmp_path / "outagemon.toml")
    (hook,) = sender.targets_of(cfg.notify)
    body = json.dumps({"version": "4", "status": "firing", "alerts": [],
                       "outagemon": {"event": "opened", "incident_id": 42, "revision": 1}},
                      separators=(",", ":")).encode()  # fmt: skip
    headers = signing.headers(hook.secret, int(time.time()), body, "42:1")

    receiver = docs_receiver()
    secret = receiver["load_secret"](str(secret_path))
    assert receiver["accept"](secret, headers, body) is True
    assert receiver["accept"](secret, headers, body) is True  # a repeat: 2xx, acted on once
    assert receiver["seen"] == {"42:1": pytest.approx(time.time(), abs=60)}
    # The file's raw bytes (the newline kept) are not the secret: why the docs strip it.
    assert receiver["accept"](secret_path.read_bytes(), headers, body) is False
    assert receiver["accept"](secret, headers, body + b" ") is False
