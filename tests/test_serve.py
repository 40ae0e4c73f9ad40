"""`reswise serve`: the real server, started as a process on a free local port and spoken to over
HTTP (tritonclient, hand-written binary-extension bodies, curl-style file bodies), answering
what `OnnxCascade` answers on real CIFAR-10 (JPEG copy) images, whatever the mix of requests."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import CIFAR_JPEG, needs_shared

pytest.importorskip("onnxruntime")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = needs_shared
MODEL = "cifar_resnet20"
PER_CLASS = 20  # 200 real test images


@functools.lru_cache(maxsize=1)
def exports() -> tuple[Path, Path, list[Path]]:
    """A real sweep of 200 CIFAR-10 (JPEG copy) test images (32/24/20, fp32 and int8), exported
    twice: the cascade [20/int8, 24, 32] (thresholds at calibration quantiles, so every stage
    answers some images) and the native fp32 model alone (a one-stage `select` policy)."""
    from reswise.choose.choices import Budget
    from reswise.choose.policies import calib_heldout_split, evaluate_cascade
    from reswise.pipeline import SweepConfig, run_sweep
    from reswise.ship.adaptive import save_choice
    from reswise.ship.export import export_policy

    root = Path(tempfile.mkdtemp(prefix="reswise_serve_"))
    files = []
    for name in sorted(p.name for p in (CIFAR_JPEG / "test").iterdir()):
        (root / "data" / name).mkdir(parents=True)
        for f in sorted((CIFAR_JPEG / "test" / name).iterdir())[:PER_CLASS]:
            files.append(Path(shutil.copyfile(f, root / "data" / name / f.name)))
    cfg = SweepConfig(model=MODEL, pretrained="reswise_jpeg_multires_v2", dataset="imagefolder",
                      data_root=str(root / "data"), resolutions="32,24,20", precision="fp32,int8",
                      quant="minmax", out=str(root / "run"), threads=1)  # fmt: skip
    run = run_sweep(cfg)
    calib, held = calib_heldout_split(run.n, 0.5, 0)
    keys = [(20, "int8"), 24, 32]
    cal = run.records.subset(calib)
    ts = [float(np.quantile(cal.confidence(k, "margin"), 0.35)) for k in keys[:-1]]
    cascade = evaluate_cascade(run.records, run.flops, 32, keys, ts, "margin", idx=held).to_dict()
    native = evaluate_cascade(run.records, run.flops, 32, [32], [], "max_softmax", idx=held)
    native = {k: v for k, v in native.to_dict().items() if k not in ("chain", "thresholds")}
    for name, found in (("cascade", cascade), ("native", {**native, "resolution": 32})):
        found.update(n_calib=len(calib), n_heldout=len(held))
        save_choice(run, found, Budget(), root / f"{name}.json")
        export_policy(root / f"{name}.json", root / name)
    return root / "cascade", root / "native", files


class Server:
    """``reswise serve DIR`` as a process on a free port of 127.0.0.1 (stops on leaving)."""

    def __init__(self, directory: Path, *flags: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="reswise_serve_", suffix=".log")[1])
        self.out = Path(str(self.log) + ".out")
        cmd = [sys.executable, "-m", "reswise", "serve", str(directory), "--port", "0",
               "--threads", "1", *flags]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log, "wb") as err, open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)", self.log.read_text())):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not start in 60 s"
            time.sleep(0.05)
        self.port = int(m.group(1))
        while self.get("/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.05)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            status, _, body = self.request("GET", path)
        except ConnectionError:
            return 0, b""
        return status, body

    def infer(self, body: bytes, headers: dict | None = None, model: str = MODEL):
        return self.request("POST", f"/v2/models/{model}/infer", body, headers)

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1].decode()
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)} (\S+)$", text, re.M))

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def serving(directory: Path, *flags: str) -> Iterator[Server]:
    s = Server(directory, *flags)
    try:
        yield s
    finally:
        s.stop()
    log = s.log.read_text()
    s.log.unlink()
    s.out.unlink()
    assert "Traceback" not in log, log[-2000:]  # every failure was an answer, none a crash


def want(directory: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """What the offline runtime answers for these files, in one batch."""
    from reswise.ship.runtime import OnnxCascade, load_images

    return OnnxCascade(directory, threads=1)(load_images(files))


def v2_json(x: np.ndarray, outputs: list[dict] | None = None) -> bytes:
    spec = {"name": "images", "datatype": "UINT8", "shape": list(x.shape),
            "data": x.ravel().tolist()}  # fmt: skip
    return json.dumps({"inputs": [spec], **({"outputs": outputs} if outputs else {})}).encode()


def v2_binary(name: str, datatype: str, shape: list[int], raw: bytes, outputs=None):
    """A binary-extension request, written from the spec (what tritonclient sends)."""
    spec = {"name": name, "datatype": datatype, "shape": shape,
            "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    head = json.dumps({"inputs": [spec], "outputs": outputs or [
        {"name": "logits", "parameters": {"binary_data": True}},
        {"name": "resolution", "parameters": {"binary_data": True}},
        {"name": "precision", "parameters": {"binary_data": False}}]}).encode()  # fmt: skip
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}  # fmt: skip


def read_binary(headers: dict[str, str], body: bytes) -> dict[str, np.ndarray]:
    """Outputs of a binary-extension response, by name."""
    n = int(headers["inference-header-content-length"])
    head, at, out = json.loads(body[:n]), n, {}
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    for o in head["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"])
            continue
        out[o["name"]] = np.frombuffer(body[at : at + size], dtypes[o["datatype"]]).reshape(
            o["shape"]
        )
        at += size
    return out


def test_answers_equal_the_runtimes_across_request_mixes():
    from reswise.ship.runtime import load_images

    cascade, _, files = exports()
    logits, res = want(cascade, files)
    prec = {20: "int8", 24: "fp32", 32: "fp32"}
    assert set(np.unique(res)) == {20, 24, 32}  # every stage answers some, so pooling is tested
    rng = np.random.default_rng(0)
    cuts = np.cumsum(rng.integers(1, 17, 40))
    parts = [np.arange(a, b) for a, b in zip([0, *cuts], cuts) if a < len(files)]
    parts[-1] = parts[-1][parts[-1] < len(files)]

    def send(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = parts[k]
        x = load_images([files[i] for i in idx])
        kind = k % 3
        if kind == 0:  # JSON, images as decoded: N x H x W x 3
            status, _, body = s.infer(v2_json(x.transpose(0, 2, 3, 1), [
                {"name": "logits"}, {"name": "resolution"}, {"name": "precision"}]))  # fmt: skip
            assert status == 200, body
            out = {o["name"]: np.asarray(o["data"]) for o in json.loads(body)["outputs"]}
        elif kind == 1:  # binary extension, the graphs' layout N x 3 x H x W
            status, headers, body = s.infer(
                *v2_binary("images", "UINT8", list(x.shape), x.tobytes())
            )
            assert status == 200, body
            out = read_binary(headers, body)
        else:  # binary extension, BYTES holding the JPEG files themselves
            raw = b"".join(
                struct.pack("<I", len(b)) + b for b in (files[i].read_bytes() for i in idx)
            )
            status, headers, body = s.infer(*v2_binary("images", "BYTES", [len(idx)], raw))
            assert status == 200, body
            out = read_binary(headers, body)
        return idx, out["logits"].reshape(len(idx), -1), out["resolution"], out["precision"]

    # batches of 16 or 50 ms, so concurrent requests share stage runs, escalations pooled
    with serving(cascade, "--max-batch", "16", "--max-wait-ms", "50") as s:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(len(parts))))
        runs0 = s.metric('reswise_batch_size_count{precision="int8",resolution="20",stage="0"}')
        runs1 = s.metric('reswise_batch_size_count{precision="fp32",resolution="24",stage="1"}')
    for idx, lg, r, p in answers:
        assert np.array_equal(r, res[idx])
        assert np.abs(lg - logits[idx]).max() < 1e-4
        assert list(p) == [prec[int(v)] for v in r]
    # fewer stage runs than requests: images of several requests ran together
    assert runs0 < len(parts) and runs1 < sum(np.any(res[i] > 20) for i in parts)


def test_tritonclient_json_and_binary_and_curl_style_files():
    http_client = pytest.importorskip("tritonclient.http")
    from reswise.ship.runtime import load_images

    cascade, _, files = exports()
    files = files[::4]  # 50 images, 5 per class
    logits, res = want(cascade, files)
    x = np.ascontiguousarray(load_images(files).transpose(0, 2, 3, 1))
    with serving(cascade) as s:
        c = http_client.InferenceServerClient(f"127.0.0.1:{s.port}")
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        meta = c.get_model_metadata(MODEL)
        assert meta["inputs"][0] == {
            "name": "images",
            "datatype": "UINT8",
            "shape": [-1, 32, 32, 3],
        }
        assert meta["parameters"]["chain"] == [20, 24, 32]
        assert meta["parameters"]["heldout"]["flops_drop_pct"] > 0  # the policy's claim
        for binary in (True, False):
            inp = http_client.InferInput("images", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [http_client.InferRequestedOutput(n, binary_data=binary)
                    for n in ("logits", "resolution")]  # fmt: skip
            r = c.infer(MODEL, [inp], outputs=outs)
            assert np.array_equal(r.as_numpy("resolution"), res)
            assert np.abs(r.as_numpy("logits") - logits).max() < 1e-4
        # BYTES holding the files, tritonclient's defaults (every output binary), and top-2
        inp = http_client.InferInput("images", [len(files)], "BYTES")
        inp.set_data_from_numpy(np.array([f.read_bytes() for f in files], dtype=np.object_))
        r = c.infer(MODEL, [inp])
        assert np.array_equal(r.as_numpy("resolution"), res)
        top = http_client.InferRequestedOutput("logits", class_count=2)
        r = c.infer(MODEL, [inp], outputs=[top])
        best = [row[0].decode().split(":") for row in r.as_numpy("logits")]
        assert [int(b[1]) for b in best] == list(logits.argmax(1))
        assert best[0][2] == "airplane"  # labels: the policy's class names
        with pytest.raises(Exception, match="no model 'resnet'"):
            c.infer("resnet", [inp])
        c.close()
        # curl --data-binary @file.jpg http://.../v1/classify?top_k=3
        for i in (0, 17, 33):
            status, _, body = s.request("POST", "/v1/classify?top_k=3", files[i].read_bytes())
            row = json.loads(body)
            assert status == 200 and row["index"] == logits[i].argmax()
            assert row["resolution"] == res[i] and len(row["top"]) == 3
            assert row["class"] == files[i].parent.name or row["prob"] < 0.99


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header claims width x height (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bad_requests_get_one_line_4xx_and_the_server_serves_on():
    from PIL import Image

    cascade, _, files = exports()
    jpeg = files[0].read_bytes()
    import io

    big = io.BytesIO()
    Image.new("RGB", (64, 64)).save(big, "PNG")

    def raw(*items: bytes) -> bytes:
        return b"".join(struct.pack("<I", len(b)) + b for b in items)

    cut = v2_binary("images", "UINT8", [1, 32, 32, 3], bytes(3072))  # an upload cut short
    cases = [
        (v2_binary("images", "BYTES", [1], raw(b"not an image")), 400, "not an image file"),
        (v2_binary("images", "BYTES", [1], raw(jpeg[: len(jpeg) // 2])), 400, "cannot decode"),
        (v2_binary("images", "BYTES", [1], raw(_png(20000, 20000))), 400, "decompression bomb"),
        (v2_binary("images", "BYTES", [1], raw(_png(10000, 10000))), 400, "decompression bomb"),
        (v2_binary("images", "BYTES", [1], raw(big.getvalue())), 400, "64 x 64 pixels.*resize"),
        (v2_binary("images", "UINT8", [1, 28, 28, 3], bytes(2352)), 400, r"\[N, 32, 32, 3\]"),
        (v2_binary("images", "FP32", [1, 32, 32, 3], bytes(12288)), 400, "is FP32; send UINT8"),
        (v2_binary("images", "UINT8", [1, 32, 32, 3], bytes(3000)), 400, "needs 3072"),
        ((cut[0][:-72], cut[1]), 400, "the body is truncated"),
        (v2_binary("images", "UINT8", [0, 32, 32, 3], b""), 400, "no images"),
        (
            (v2_json(np.zeros((1, 32, 32, 3), np.uint8), [{"name": "scores"}]), {}),
            400,
            "unknown output 'scores'",
        ),  # fmt: skip
        ((b"", {}), 400, "body is empty"),
        ((b"{not json", {}), 400, "not JSON"),
        ((b"x", {"Content-Length": str(1 << 30)}), 413, "over 67108864 bytes"),
    ]
    with serving(cascade) as s:
        for (body, headers), code, match in cases:
            status, got, text = s.infer(body, headers)
            err = json.loads(text)["error"]
            assert status == code and re.search(match, err) and "\n" not in err, (code, err)
        status, _, text = s.infer(v2_json(np.zeros((1, 32, 32, 3), np.uint8)), model="resnet50")
        assert status == 404 and "this server serves 'cifar_resnet20'" in json.loads(text)["error"]
        status, _, text = s.request("POST", "/v1/classify", b"GIF89a")
        assert status == 400 and "not an image file" in json.loads(text)["error"]
        # and it still answers, right
        logits, res = want(cascade, files[:3])
        status, headers, body = s.infer(*v2_binary("images", "BYTES", [3], raw(*(f.read_bytes() for f in files[:3]))))  # fmt: skip
        assert status == 200 and np.array_equal(read_binary(headers, body)["resolution"], res)
        bad = sum(code == 400 for *_, code, _ in cases)
        assert s.metric('reswise_requests_total{code="400",route="infer"}') == bad
        assert s.metric('reswise_requests_total{code="413",route="infer"}') == 1


def test_metrics_count_requests_batches_stages_and_latency():
    _, native, files = exports()
    with serving(native, "--name", "r20") as s:
        x = np.zeros((5, 32, 32, 3), np.uint8)
        for _ in range(3):
            assert s.infer(v2_json(x), model="r20")[0] == 200
        text = s.get("/metrics")[1].decode()
        for line in (
            'reswise_requests_total{code="200",route="infer"} 3.0',
            'reswise_images_answered_total{precision="fp32",resolution="32",stage="0"} 15.0',
            'reswise_queue_images{precision="fp32",resolution="32",stage="0"} 0.0',
            "reswise_images_in_flight 0.0",
            'reswise_request_seconds_count{route="infer"} 3.0',
        ):
            assert line in text, line
        assert re.search(r'reswise_batch_size_sum\{[^}]*stage="0"\} 15\.0', text)
        assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
        assert "_created" not in text
        # the one-stage policy answers as the runtime does
        logits, _ = want(native, files[:4])
        status, headers, body = s.infer(*v2_binary("images", "BYTES", [4], b"".join(
            struct.pack("<I", len(b)) + b for b in (f.read_bytes() for f in files[:4]))), model="r20")  # fmt: skip
        assert status == 200 and np.abs(read_binary(headers, body)["logits"] - logits).max() < 1e-4


def test_serve_imports_no_torch():
    cascade, _, _ = exports()
    steps = [
        "import sys",
        "from reswise.cli.main import build_parser",
        "from reswise.ship.runtime import OnnxCascade",
        "from reswise.ship.serve import app, model, server",
        f"app.create_app(model.ServedModel(OnnxCascade({str(cascade)!r})))",
        "build_parser().parse_args(['serve', 'x', '--threads', '1'])",
        "assert 'torch' not in sys.modules, 'torch imported'",
    ]
    p = subprocess.run([sys.executable, "-c", "\n".join(steps)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_bad_flags_and_folders_exit_2(tmp_path: Path):
    for args, match in (
        ([str(tmp_path)], "no exported cascade"),
        ([str(tmp_path), "--max-batch", "0"], "--max-batch must be a positive integer"),
        ([str(tmp_path), "--threads", "-1"], "--threads must be a positive integer"),
        # an empty name served the policy's name unsaid; a "/" made the model unreachable
        ([str(tmp_path), "--name", ""], "--name must be"),
        ([str(tmp_path), "--name", "a/b"], "--name must be"),
        ([str(tmp_path), "--max-queue-ms", "-1"], "--max-queue-ms must be >= 0"),
    ):
        p = subprocess.run([sys.executable, "-m", "reswise", "serve", *args],
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 2 and match in p.stderr, p.stderr
