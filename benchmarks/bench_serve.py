"""`reswise serve` under open-loop load: the highest rate each export sustains within the SLO.

    .venv/bin/python benchmarks/bench_serve.py --serve fp32=shipped_fp32/ --serve cascade=shipped/ \
        --data-root ../shared/datasets/cifar10-jpeg/test [--images-per-request 1,16] [--quick]

Each export (``NAME=EXPORT_DIR``; the first is the baseline, e.g. the fp32 native model exported
from a one-stage ``select --save`` policy) is served alone by its own ``reswise serve`` process
on a free port of 127.0.0.1, with the same flags. One asyncio client (this process; raw HTTP/1.1
on keep-alive connections; binary tensor extension, UINT8 images) sends requests at exponential
gaps: Poisson arrivals, open loop, so a slow answer never delays the next request. Each step
lasts ``--step-s`` seconds at one rate; the rate grows by ``--rate-step`` until a step fails
(p99 over the SLO, a request refused (503/504) or lost, or less than 95 % of the offered rate
answered), at most ``--max-steps`` steps. Printed per export and request size: the highest
sustained rate, p50/p99 there, served top-1 against the folder's labels (the policy's held-out
images when the folder is the one its sweep ran on), requests lost (no answer at all), and,
from the server's ``/metrics`` during its busiest step, the stage time per image against the
baseline's (time saved) beside the FLOPs the answering shares save. The offline speed-up
(``OnnxCascade`` on the same images, batches of 64, this process, before any server starts)
is printed beside the served one. The client shares the machine with the server: say so when
quoting a figure. No assertion: speed is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("RESWISE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SUFFIXES = {".jpg", ".jpeg", ".png"}


def held_out_images(export: Path, root: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N x H x W x 3) and labels: the policy's held-out half when ``root`` is
    the folder its sweep ran on (same count), else every image; at most ``limit``."""
    from reswise.ship.policy_file import heldout_positions, load_policy
    from reswise.ship.runtime import load_images

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        got = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in SUFFIXES)
        files += got
        labels += [k] * len(got)
    policy = load_policy(export / "policy.json", exported=True)
    pos = np.arange(len(files))
    if policy["images"]["n"] == len(files):
        pos = heldout_positions(policy)
    pos = pos[np.random.default_rng(0).permutation(len(pos))][:limit]
    x = load_images([files[i] for i in pos]).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(labels)[pos]


def bodies(model: str, x: np.ndarray, per: int) -> list[bytes]:
    """One HTTP request per ``per`` images (binary extension), ready to write."""
    out = []
    for s in range(0, len(x) - per + 1, per):
        raw = x[s : s + per].tobytes()
        head = json.dumps({
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [per, *x.shape[1:]],
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }).encode()  # fmt: skip
        out.append(
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\n"
            f"Content-Length: {len(head) + len(raw)}\r\n\r\n".encode()
            + head
            + raw
        )
    return out


class Client:
    """Keep-alive connections to one server; a request takes an idle one or opens another."""

    def __init__(self, port: int, max_connections: int) -> None:
        self.port, self.max = port, max_connections
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.stale = 0  # kept-alive connections found closed by the server, request resent

    async def send(self, body: bytes, timeout: float) -> tuple[int, int, bytes]:
        """Status, JSON header length and body; status 0: no answer (lost).

        A kept-alive connection the server closed while it sat idle fails before any byte of
        an answer: the request is sent again on a fresh connection, as HTTP clients do for
        stale pooled connections (``self.stale`` counts them), not counted as lost."""
        if self.idle:
            got = await self._send(self.idle.pop(), body, timeout, reused=True)
            if got is not None:
                return got
            self.stale += 1
        if self.open < self.max:
            self.open += 1
            try:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                return 0, 0, b""
        else:
            return -1, 0, b""  # the client's own limit: counted apart, not as the server's loss
        got = await self._send(conn, body, timeout, reused=False)
        assert got is not None
        return got

    async def _send(self, conn, body: bytes, timeout: float, reused: bool):  # noqa: ANN001
        try:
            r, w = conn
            w.write(body)
            status, fields, payload = await asyncio.wait_for(_response(r), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
            conn[1].close()
            self.open -= 1
            closed_idle = isinstance(e, (asyncio.IncompleteReadError, ConnectionResetError)) and (
                not getattr(e, "partial", b"")
            )
            return None if reused and closed_idle else (0, 0, b"")
        keep = fields.get("connection", "").lower() != "close"
        if keep:
            self.idle.append(conn)
        else:
            conn[1].close()
            self.open -= 1
        return status, int(fields.get("inference-header-content-length", 0)), payload

    def close(self) -> None:
        for _, w in self.idle:
            w.close()


async def _response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    return int(head[0].split()[1]), fields, await r.readexactly(int(fields["content-length"]))


async def step(
    client: Client, reqs: list[bytes], labels: list[np.ndarray], rate: float, seconds: float,
    timeout: float, max_requests: int,
) -> dict:  # fmt: skip
    """Poisson arrivals at ``rate`` for ``seconds``; what came back."""
    rng = random.Random(int(rate * 1000))
    n = min(max_requests, max(1, int(rate * seconds)))
    results: list[tuple[int, float, int, int]] = []

    async def one(k: int) -> None:
        t = time.perf_counter()
        status, head, body = await client.send(reqs[k % len(reqs)], timeout)
        right = 0
        if status == 200:
            logits = np.frombuffer(body[head:], np.float32).reshape(len(labels[0]), -1)
            right = int((logits.argmax(1) == labels[k % len(reqs)]).sum())
        results.append((status, time.perf_counter() - t, right, len(labels[0])))

    tasks, t0 = [], time.perf_counter()
    at = t0
    for k in range(n):
        at += rng.expovariate(rate)
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k)))
    sent_s = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    codes = [r[0] for r in results]
    ok = [r for r in results if r[0] == 200]
    lat = np.array([r[1] for r in ok]) * 1e3
    return {
        "rate": rate, "sent": n, "ok": len(ok), "wall_s": wall,
        "sent_per_s": n / sent_s if sent_s > 0 else float("nan"),  # below rate: client-bound
        "answered_per_s": len(ok) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "refused_503": codes.count(503), "timed_out_504": codes.count(504),
        "lost": codes.count(0), "client_limited": codes.count(-1),
        "other": sum(c not in (0, -1, 200, 503, 504) for c in codes),
        "right": sum(r[2] for r in ok), "images": sum(r[3] for r in ok),
    }  # fmt: skip


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out = {}
    for name, labels, value in re.findall(
        r"^((?:reswise|process)_\w+)(\{[^}]*\})? (\S+)$", text, re.M
    ):
        out[name + labels] = float(value)
    return out


def stage_figures(before: dict, after: dict) -> dict[str, float]:
    """Stage seconds and images answered per stage during one step (from /metrics)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    secs = sum(v for k, v in d.items() if k.startswith("reswise_stage_seconds_total"))
    answered = {  # by stage index (two stages may share a resolution)
        int(re.search(r'stage="(\d+)"', k).group(1)): v
        for k, v in d.items()
        if k.startswith("reswise_images_answered_total")
    }
    n = sum(answered.values())
    return {"stage_s_per_image": secs / n if n else float("nan"), "answered": answered}


def flops_saved(export: Path, answered: dict[int, float]) -> float:
    policy = json.loads((export / "policy.json").read_text())
    flops, chain = policy["flops"], policy["chain"]
    n = sum(answered.values())
    reached = [sum(v for i, v in answered.items() if i >= k) for k in range(len(chain))]
    mean = sum(m * flops[str(c)] for m, c in zip(reached, chain)) / max(n, 1)
    return 100.0 * (1 - mean / flops[str(policy["reference"])])


def offline_images_per_s(export: Path, x: np.ndarray, threads: int | None) -> float:
    from reswise.ship.runtime import OnnxCascade

    cascade = OnnxCascade(export, threads=threads)
    xs = [x[s : s + 64] for s in range(0, len(x) - 63, 64)] or [x]
    cascade(xs[0])  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for b in xs:
            cascade(b)
        times.append(time.perf_counter() - t)
    return sum(len(b) for b in xs) / float(np.median(times))


def start_server(export: Path, flags: list[str]) -> tuple[subprocess.Popen, int, Path]:
    log = Path(tempfile.mkstemp(prefix="bench_serve_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "reswise", "serve", str(export), "--port", "0", *flags]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while not (m := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)
    return proc, int(m.group(1)), log


async def ramp(port: int, reqs, labels, args) -> tuple[list[dict], dict | None]:  # noqa: ANN001
    client = Client(port, args.max_connections)
    per = len(labels[0])
    rows, busiest, rate = [], None, args.rate_start / per  # the same images/s at any size
    try:
        for _ in range(args.max_steps):
            before, stale = scrape(port), client.stale
            row = await step(client, reqs, labels, rate, args.step_s, args.timeout_s,
                             args.max_requests)  # fmt: skip
            row.update(stage_figures(before, scrape(port)))
            row["stale_resent"] = client.stale - stale
            # open loop: a server that cannot keep up queues, and p99 passes the SLO
            row["sustained"] = row["ok"] == row["sent"] and row["p99_ms"] <= args.slo_ms
            rows.append(row)
            busiest = row
            if not row["sustained"]:
                break
            rate *= args.rate_step
            await asyncio.sleep(0.5)  # let the queues empty between steps
    finally:
        client.close()
    return rows, busiest


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", action="append", required=True, metavar="NAME=EXPORT_DIR")
    ap.add_argument("--data-root", default=str(SHARED / "datasets/cifar10-jpeg/test"))
    ap.add_argument("--images", type=int, default=2048, help="distinct images sent (cycled)")
    ap.add_argument("--images-per-request", default="1,16")
    ap.add_argument("--slo-ms", type=float, default=100.0, help="p99 latency bound")
    ap.add_argument("--rate-start", type=float, default=200.0, help="requests/s of the first step")
    ap.add_argument("--rate-step", type=float, default=1.25)
    ap.add_argument("--step-s", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--max-requests", type=int, default=200_000, help="per step")
    ap.add_argument("--max-connections", type=int, default=512)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="client gives up: lost")
    ap.add_argument("--threads", type=int, help="the servers' --threads")
    ap.add_argument("--server-flags", default="", help="more flags for every reswise serve")
    ap.add_argument(
        "--overload",
        type=float,
        default=0.0,
        help="then this multiple of the sustained rate (e.g. 2) for --overload-s",
    )
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="a few seconds: smoke test only")
    ap.add_argument("--json", help="also write every step's figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.images, args.images_per_request = min(args.images, 256), "1"
        args.rate_start, args.step_s, args.max_steps = min(args.rate_start, 50.0), 1.0, 2
    return args


def measure(export: Path, per: int, x: np.ndarray, labels: np.ndarray, flags: list[str],
            args: argparse.Namespace) -> dict:  # fmt: skip
    """One export served alone, ramped: the sustained step, the busiest step, all steps."""
    model = json.loads((export / "policy.json").read_text())["model"]
    reqs = bodies(model, x, per)
    labs = [labels[s : s + per] for s in range(0, len(x) - per + 1, per)]
    proc, port, _ = start_server(export, flags)
    over = None
    try:
        rows, busiest = asyncio.run(ramp(port, reqs, labs, args))
        ok = [r for r in rows if r["sustained"]]
        best = ok[-1] if ok else None
        if args.overload and best:
            over = asyncio.run(overload(port, reqs, labs, best["rate"] * args.overload, args))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    return {
        "images_per_request": per, "exit_code": code,
        "sustained_requests_per_s": best["rate"] if best else 0.0,
        "sustained_images_per_s": best["rate"] * per if best else 0.0,
        "p50_ms": best["p50_ms"] if best else None, "p99_ms": best["p99_ms"] if best else None,
        "top1": 100.0 * sum(r["right"] for r in rows) / max(1, sum(r["images"] for r in rows)),
        "lost": sum(r["lost"] for r in rows),
        "client_limited": sum(r["client_limited"] for r in rows),
        "stage_s_per_image": busiest["stage_s_per_image"],
        "flops_saved_pct": flops_saved(export, busiest["answered"]),
        "steps": rows, "overload": over,
    }  # fmt: skip


async def overload(port: int, reqs, labels, rate: float, args) -> dict:  # noqa: ANN001
    """``rate`` (a multiple of the sustained one) for ``--overload-s`` seconds: every request
    must come back answered (200) or refused at once (503/504), none lost; p99 of the 200s and
    the server's resident memory before and after say whether the queue stayed bounded."""
    client = Client(port, args.max_connections)
    mem = "process_resident_memory_bytes"
    try:
        before = scrape(port).get(mem, float("nan"))
        row = await step(client, reqs, labels, rate, args.overload_s, args.timeout_s,
                         args.max_requests * 10)  # fmt: skip
        row["rss_mb_before"], row["rss_mb_after"] = before / 2**20, scrape(port)[mem] / 2**20
    finally:
        client.close()
    return row


def overload_line(name: str, row: dict) -> str:
    o = row["overload"]
    return (
        f"{name:>10} x{row['images_per_request']:<3} overload {o['rate']:.0f} req/s for "
        f"{o['wall_s']:.0f} s: sent {o['sent']}, 200 {o['ok']}, 503 {o['refused_503']}, 504 "
        f"{o['timed_out_504']}, lost {o['lost']}, other {o['other']}, client-limited "
        f"{o['client_limited']}; p99 of 200s {o['p99_ms']:.1f} ms; RSS "
        f"{o['rss_mb_before']:.0f} -> {o['rss_mb_after']:.0f} MB"
    )


def line(name: str, row: dict) -> str:
    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)

    return (
        f"{name:>10} x{row['images_per_request']:<3} sustained "
        f"{row['sustained_requests_per_s']:7.0f} req/s {row['sustained_images_per_s']:7.0f} img/s"
        f"  p50 {num('p50_ms', '.1f')} ms  p99 {num('p99_ms', '.1f')} ms  top-1 "
        f"{row['top1']:.2f} %  lost {row['lost']}  steps {len(row['steps'])}  time saved "
        f"{row['time_saved_pct']:.1f} % vs FLOPs saved {row['flops_saved_pct']:.1f} %  "
        f"speed-up served {num('served_speedup', '.2f')}x / offline "
        f"{num('offline_speedup', '.2f')}x  exit {row['exit_code']}"
    )


def main() -> None:
    args = parse_args()
    exports = [(n, Path(d)) for n, _, d in (s.partition("=") for s in args.serve)]
    flags = [*(["--threads", str(args.threads)] if args.threads else []),
             *args.server_flags.split()]  # fmt: skip
    x, labels = held_out_images(exports[0][1], Path(args.data_root), args.images)
    print(f"{len(x)} images of {args.data_root}; SLO p99 <= {args.slo_ms:g} ms; server flags "
          f"{flags or 'defaults'}; client and server share this machine ({os.cpu_count()} CPUs)")  # fmt: skip
    nchw = x.transpose(0, 3, 1, 2)
    offline = {n: offline_images_per_s(d, nchw, args.threads) for n, d in exports}
    report = []
    for per in (int(v) for v in args.images_per_request.split(",")):
        base = None
        for name, export in exports:
            row = {"export": name, **measure(export, per, x, labels, flags, args)}
            row["offline_images_per_s"] = offline[name]
            base = base or row  # the first export is the baseline
            row["time_saved_pct"] = 100 * (1 - row["stage_s_per_image"] / base["stage_s_per_image"])
            if base["sustained_requests_per_s"] and row["sustained_requests_per_s"]:
                row["served_speedup"] = (
                    row["sustained_requests_per_s"] / base["sustained_requests_per_s"]
                )
                row["offline_speedup"] = offline[name] / offline[base["export"]]
            report.append(row)
            print(line(name, row), flush=True)
            if row["overload"]:
                print(overload_line(name, row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
