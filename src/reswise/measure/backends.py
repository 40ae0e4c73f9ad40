"""How the forward pass runs: eager torch, ``torch.compile`` (inductor), or ONNX Runtime.

    runner = make_runner("onnxruntime", folded, base, resolution=32, batch=128)
    logits = runner(x)  # float NCHW in, float logits out, whatever the backend

The sweep spends ~95 % of its time in the forward, and on a small CPU eager torch leaves much
of the machine unused (docs/speed.md). Every backend gets the same module (BN folded) and
the same input; predictions are tested to agree with eager fp32 per backend on real images.
Exported graphs and inductor's compiled code are cached in ``<cache>/backends`` and
``<cache>/inductor`` (``$RESWISE_CACHE``, default ``~/.cache/reswise``), so a second run pays
neither again. ``auto`` times the candidates on one batch per resolution and keeps the fastest;
the decision is cached with the timings, keyed by model, resolution, batch, device, threads, CPU
and library versions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ReswiseError

BACKENDS = ("auto", "eager", "compile", "onnxruntime")
ALIASES = {"torch": "eager"}  # latency --runtime torch, before --backend existed
MIN_BATCHES_TO_PROBE = 8  # fewer batches than this: probing would cost more than it saves
PROBE_CALLS = 2  # timed calls per candidate after one warm-up call


def cache_root() -> Path:
    """reswise's cache (``$RESWISE_CACHE``, default ``~/.cache/reswise``), shared with decoding."""
    from ..data.datasets import cache_dir

    return cache_dir()


def check_backend(name: str, device: str) -> str:
    """The canonical backend name, or a one-line error naming the valid ones."""
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ReswiseError(f"unknown backend '{name}'; use one of {', '.join(BACKENDS)}")
    if name == "onnxruntime" and not device.startswith("cpu"):
        raise ReswiseError(
            "--backend onnxruntime runs on the CPU only (reswise installs ONNX Runtime's CPU "
            "build); use --device cpu, or --backend eager/compile on the GPU"
        )
    return name


@dataclass
class Runner:
    """One forward at one resolution: a callable from a float NCHW batch to float logits."""

    backend: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    channels_last: bool  # the input layout the backend wants (eager/compile on CPU)
    batch: int | None = None  # compiled for exactly this batch: smaller batches are padded
    setup_s: float = 0.0  # export / compile time paid for this runner
    # takes resized pixels (float 0..255) and normalises inside: the int8 graphs, so the sweep,
    # AdaptiveClassifier and the exported stage share one normalisation arithmetic
    pixels: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.batch is not None and n < self.batch:  # a new shape would compile again
            pad = x.new_zeros((self.batch - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(
                memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
            )
        return self.fn(x)[:n]


def _eager(folded: nn.Module, device: str) -> Runner:
    return Runner("eager", folded, channels_last=device == "cpu")


@contextlib.contextmanager
def _inductor_cache() -> Any:
    """Inductor's on-disk caches under reswise's cache unless the user set their own."""
    key = "TORCHINDUCTOR_CACHE_DIR"
    had = key in os.environ
    if not had:
        os.environ[key] = str(cache_root() / "inductor")
    try:
        yield
    finally:
        if not had:
            os.environ.pop(key, None)


def _compile(folded: nn.Module, resolution: int, batch: int, device: str) -> Runner:
    import torch._dynamo
    import torch._inductor.config as inductor

    cl = device == "cpu"
    x = torch.zeros(batch, 3, resolution, resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    t = time.perf_counter()
    # freezing folds the weights into the compiled graph (constant-folds and pre-packs them for
    # oneDNN): 1.56x over eager for ResNet-20 at 32x32 here, 1.12x without it
    try:
        with (
            _inductor_cache(),
            inductor.patch(freezing=True),
            torch._dynamo.config.patch(recompile_limit=64),
        ):
            fn = torch.compile(copy.copy(folded), dynamic=False)
            with torch.inference_mode():
                fn(x)
    except Exception as e:  # inductor raises many types (no compiler, unsupported op)
        raise ReswiseError(
            f"torch.compile failed at {resolution}x{resolution} ({str(e).splitlines()[0][:120]}); "
            "use --backend eager or onnxruntime"
        ) from None
    return Runner("compile", fn, cl, batch=batch, setup_s=time.perf_counter() - t)


def onnx_path(base: nn.Module, name: str, resolution: int, opset: int = 17) -> Path:
    """Where the exported graph of these weights at this resolution is cached."""
    from .progress import weights_digest

    tag = f"{name.replace(':', '_').replace('/', '_')}-{weights_digest(base)}-r{resolution}"
    return cache_root() / "backends" / f"{tag}-opset{opset}-torch{torch.__version__}.onnx"


def cached_graph(base: nn.Module, name: str, resolution: int) -> Path:
    """The fp32 ONNX graph of these weights at this resolution, exported once into the cache."""
    from .onnx import export_graph

    path = onnx_path(base, name, resolution)
    if not path.is_file():
        net = copy.deepcopy(base).float().eval().to("cpu", memory_format=torch.contiguous_format)
        export_graph(net, resolution, path)  # atomic: a killed export leaves no half graph
    return path


def ort_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session the way reswise runs every graph (sweep, timing, runtime)."""
    from .onnx import require_onnxruntime

    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ONNX Runtime's threads spin while waiting for work; between two forwards reswise resizes
    # and takes the softmax with torch's threads, and spinning ones took the cores from them:
    # resize + forward of a CIFAR sweep took 29 s with spinning, 16 s without (2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def session_runner(sess: Any, backend: str, setup_s: float = 0.0, pixels: bool = False) -> Runner:
    """A runner over an ONNX Runtime session (fp32 or int8 graph) with one input."""
    name = sess.get_inputs()[0].name

    def fn(x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", memory_format=torch.contiguous_format).float().numpy()
        return torch.from_numpy(sess.run(None, {name: feed})[0])

    return Runner(backend, fn, channels_last=False, setup_s=setup_s, pixels=pixels)


def _onnxruntime(base: nn.Module, name: str, resolution: int, threads: int) -> Runner:
    t = time.perf_counter()
    sess = ort_session(cached_graph(base, name, resolution), threads)
    return session_runner(sess, "onnxruntime", time.perf_counter() - t)


def make_runner(
    backend: str,
    folded: nn.Module,
    base: nn.Module,
    *,
    name: str,
    resolution: int,
    batch: int,
    device: str,
    threads: int | None = None,
) -> Runner:
    """A runner of one backend (not ``auto``): ``folded`` for torch, ``base`` for export."""
    threads = threads or torch.get_num_threads()
    if backend == "eager":
        return _eager(folded, device)
    if backend == "compile":
        runner = _compile(folded, resolution, batch, device)
        # a compiled graph is now cached: let auto weigh it against the others again
        facts = {"compile_setup_s": runner.setup_s, "backend": None}
        _remember(name, resolution, batch, device, threads, facts)
        return runner
    if backend == "onnxruntime":
        return _onnxruntime(base, name, resolution, threads)
    raise ReswiseError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")


def _decision_key(name: str, resolution: int, batch: int, device: str, threads: int) -> str:
    import onnxruntime

    from .doctor import cpu_name

    cpu = cpu_name()
    if device.startswith("cuda"):
        cpu += f" + {torch.cuda.get_device_name(torch.device(device))}"
    return (
        f"{name}|r{resolution}|b{batch}|{device}|t{threads}|{cpu}|torch {torch.__version__}"
        f"|ort {onnxruntime.__version__}"
    )


def _decisions_file() -> Path:
    return cache_root() / "backends" / "decisions.json"


def _load_decisions() -> dict[str, Any]:
    try:
        return json.loads(_decisions_file().read_text())
    except (OSError, ValueError):
        return {}


def _remember(
    name: str, resolution: int, batch: int, device: str, threads: int, facts: dict[str, Any]
) -> None:
    from ..records import write_atomic

    try:
        key = _decision_key(name, resolution, batch, device, threads)
    except ImportError:
        return
    decisions = _load_decisions()
    decisions[key] = {**decisions.get(key, {}), **facts}
    try:
        path = _decisions_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(decisions, indent=1).encode())
    except OSError:  # a read-only cache costs a probe next time, nothing more
        pass


def _time_ms(runner: Runner, x: torch.Tensor, beat: float = float("inf")) -> float:
    """Milliseconds per call; a candidate whose warm-up call alone takes twice ``beat`` (the
    best so far) is not timed further: probing slow eager Lite0 cost 19 s of a 78 s sweep."""
    x = x.contiguous(memory_format=torch.channels_last) if runner.channels_last else x.contiguous()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.inference_mode():
        t = time.perf_counter()
        runner(x)
        sync()
        first = 1e3 * (time.perf_counter() - t)
        if first > 2 * beat:
            return first
        t = time.perf_counter()
        for _ in range(PROBE_CALLS):
            runner(x)
        sync()
    return 1e3 * (time.perf_counter() - t) / PROBE_CALLS


def pick_runner(
    folded: nn.Module,
    base: nn.Module,
    *,
    name: str,
    resolution: int,
    batch: int,
    device: str,
    n_batches: int,
    threads: int | None = None,
) -> Runner:
    """``auto``: the fastest candidate on one batch at this resolution (or the cached choice).

    Candidates: eager; ONNX Runtime on the CPU; compile only once a compile of this model,
    resolution and batch is cached (a cold compile costs ~25 s here, more than most sweeps
    would win back). Runs of fewer than ``MIN_BATCHES_TO_PROBE`` batches stay eager.
    """
    threads = threads or torch.get_num_threads()
    kw = {"name": name, "resolution": resolution, "batch": batch, "device": device}
    try:
        key = _decision_key(name, resolution, batch, device, threads)
    except ImportError:  # no ONNX Runtime: eager or compile only
        key = None
    known = _load_decisions().get(key, {}) if key else {}
    if known.get("backend"):
        return make_runner(known["backend"], folded, base, threads=threads, **kw)
    if n_batches < MIN_BATCHES_TO_PROBE:
        return _eager(folded, device)
    candidates = []  # the usually fastest first, so slow ones are dropped after one call
    if device == "cpu" and key is not None:
        candidates.append("onnxruntime")
    if "compile_setup_s" in known:
        candidates.append("compile")
    candidates.append("eager")
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    runners, ms = {}, {}
    for b in candidates:
        try:
            runners[b] = make_runner(b, folded, base, threads=threads, **kw)
        except ReswiseError:
            continue  # a backend that cannot run this model is simply not a candidate
        ms[b] = _time_ms(runners[b], x, min(ms.values(), default=float("inf")))
    best = min(ms, key=ms.__getitem__)
    _remember(name, resolution, batch, device, threads, {"backend": best, "ms": ms})
    return runners[best]
