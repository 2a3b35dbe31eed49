"""`outagemon demo`, as a new user runs it: an outage answer over HTTP within two minutes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from outagemon.sim.demo import READ_TOKEN
from tests.conftest import free_port


def test_the_demo_shows_an_outage_over_http_and_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "outagemon", "demo", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        answer: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            text = log.read_text()
            phone = next((line.split("phone=")[1].split("'")[0] for line in text.splitlines()
                          if "check?phone=" in line), None)  # fmt: skip
            if phone and "/api/v1/check" in text:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v1/check?phone={phone}",
                    headers={"Authorization": f"Bearer {READ_TOKEN}"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=2) as r:
                        answer = json.loads(r.read())
                except (urllib.error.URLError, ConnectionError):
                    pass
                if answer.get("status") == "outage":
                    break
            time.sleep(1)
        assert answer.get("status") == "outage", (answer, log.read_text()[-3000:])
        assert answer["root_node"] == "agg-2" and answer["incident_id"]
        first_lines = log.read_text().splitlines()[:6]
        assert any(f"http://127.0.0.1:{port}/" in line for line in first_lines)
        state = next(line.split('"data_dir": "')[1].split("/pgdata")[0]
                     for line in log.read_text().splitlines() if '"data_dir"' in line)  # fmt: skip
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=15)
    assert code == 0
    assert not Path(state).exists(), "the demo must remove its files"
