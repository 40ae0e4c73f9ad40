"""`reswise serve` under pressure, on the real server process: a full queue answers 503 with
Retry-After at once, a request past its deadline 504 (its images withdrawn), and SIGTERM stops
taking work, answers what it took and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .conftest import needs_shared
from .test_serve import Server, exports, read_binary, serving, v2_binary, v2_json, want

pytestmark = needs_shared


def wait_for(s: Server, metric: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while s.metric(metric) != value:
        assert time.monotonic() < deadline, f"{metric} never reached {value}"
        time.sleep(0.02)


def test_full_queue_answers_503_at_once_and_deadline_504():
    _, native, _ = exports()
    x4 = np.zeros((4, 32, 32, 3), np.uint8)
    # nothing runs before 10 s (batch 64 never fills), so queued requests stay queued
    flags = ("--max-queue", "4", "--max-wait-ms", "10000", "--timeout-ms", "1500")
    with serving(native, *flags) as s, ThreadPoolExecutor(1) as pool:
        first = pool.submit(s.infer, v2_json(x4))
        wait_for(s, "reswise_images_in_flight", 4)
        t = time.monotonic()
        status, headers, body = s.infer(v2_json(x4[:1]))
        assert status == 503 and headers["retry-after"] == "1" and time.monotonic() - t < 1.0
        assert "server is full (4 images waiting)" in json.loads(body)["error"]
        status, _, body = first.result()
        assert status == 504 and "not answered within 1500 ms" in json.loads(body)["error"]
        # its images were withdrawn: a request of 4 fits again (and times out in turn)
        assert s.metric("reswise_images_in_flight") == 0
        assert s.infer(v2_json(x4))[0] == 504
        status, _, body = s.infer(v2_json(np.zeros((5, 32, 32, 3), np.uint8)))
        assert status == 413 and "split it into smaller requests" in json.loads(body)["error"]
        for code, n in (("503", 1), ("504", 2), ("413", 1)):
            assert s.metric(f'reswise_requests_total{{code="{code}",route="infer"}}') == n


def test_sigterm_stops_taking_work_answers_what_it_took_and_exits_0():
    _, native, files = exports()
    logits, _ = want(native, files[:2])
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in (f.read_bytes() for f in files[:2]))
    s = Server(native, "--max-wait-ms", "5000", "--timeout-ms", "60000")
    try:
        with ThreadPoolExecutor(1) as pool:
            taken = pool.submit(s.infer, *v2_binary("images", "BYTES", [2], raw))
            wait_for(s, "reswise_images_in_flight", 2)
            s.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while s.get("/v2/health/ready")[0] != 503:
                assert time.monotonic() < deadline, "ready never went false"
                time.sleep(0.02)
            assert json.loads(s.get("/v2/health/ready")[1]) == {"ready": False}
            status, _, body = s.infer(v2_json(np.zeros((1, 32, 32, 3), np.uint8)))
            assert status == 503 and "shutting down" in json.loads(body)["error"]
            status, headers, body = taken.result(timeout=60)
        assert status == 200  # accepted before the signal: answered, and right
        assert np.abs(read_binary(headers, body)["logits"] - logits).max() < 1e-4
        assert s.proc.wait(30) == 0
        assert "stopped; requests answered" in s.out.read_text()
    finally:
        s.stop()


def test_a_taken_port_is_one_line_and_exit_2():
    _, native, _ = exports()
    with serving(native) as s:
        p = subprocess.run(
            [sys.executable, "-m", "reswise", "serve", str(native), "--port", str(s.port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert p.returncode == 2 and "cannot listen on 127.0.0.1" in p.stderr, p.stderr
