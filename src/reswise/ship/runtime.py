"""Run an exported cascade with numpy and ONNX Runtime alone (pillow to read image files).

    from reswise.runtime import OnnxCascade
    cascade = OnnxCascade("shipped/")  # written by `reswise export --policy P --out shipped/`
    for row in cascade.classify_folder("photos/"):
        print(row["file"], row["class"], row["resolution"])

No torch import, here or in anything this module imports (a test checks). Confidence is
:func:`reswise.records.confidence` on softmax statistics computed as the sweep computes them, so
the runner escalates the images the torch module escalates.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReswiseError
from ..records import confidence
from .policy_file import load_policy
from .seal import check_graph

TOPK = 2  # what every signal reads: top-1 and top-2 probabilities
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def softmax_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k softmax probabilities (descending) and entropy in nats, in float32 like the sweep."""
    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    k = min(TOPK, p.shape[1])
    top = -np.sort(-p, axis=1)[:, :k]
    return top, -(p * logp).sum(axis=1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime session whose idle threads sleep instead of spinning.

    Stages run one after another, each session with its own pool: spinning threads of the
    stage that just finished took the cores from the next one (measured here at batch 1, two
    threads: the reference graph 1.11 ms beside two other spinning sessions, 0.90 ms with
    spinning off). ONNX Runtime's process-wide pool would avoid both, but once set every
    session in the process must use it, so a library cannot choose it for its caller.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ReswiseError(
            "the runtime needs ONNX Runtime: pip install onnxruntime (or 'reswise[onnx]')"
        ) from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default, one per core
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxCascade:
    """The exported cascade: ``cascade(images) -> (logits, resolution)`` on native-size uint8
    images (``N x 3 x H x W`` or ``N x H x W x 3``).

    ``fused=True`` runs ``cascade.onnx``, the stages and their routing in one graph (one call
    per batch); ``False`` runs one session per stage and routes in numpy. Both give the same
    answers (the export checks each against the torch module).
    """

    def __init__(
        self, directory: str | Path, threads: int | None = None, fused: bool = False
    ) -> None:
        directory = Path(directory)
        path = directory / "policy.json"
        if not path.is_file():
            raise ReswiseError(
                f"{directory} holds no exported cascade (policy.json); write one with "
                "reswise export --policy POLICY.json --out DIR"
            )
        # checked like every policy file, plus its graphs: a hand-edited copy is refused in one
        # line naming the field, not met later as a KeyError or a stage quietly skipped
        self.policy = load_policy(path, exported=True)
        graphs = self.policy["graphs"]
        self.chain = [int(r) for r in self.policy["chain"]]
        self.thresholds = [float(t) for t in self.policy["thresholds"]]
        self.signal = self.policy["signal"] or "max_softmax"
        self.size = tuple(graphs["input"]["size"])
        self.class_names = self.policy.get("class_names")
        self._stages = (directory, graphs["stages"], threads)
        self._sessions: list[Any] | None = None
        self._reference = (directory, graphs["reference"], threads)
        self._ref_session: Any = None
        self.fused: Any = None
        if not fused:
            self.sessions  # noqa: B018 (load and hash-check them now, not at the first batch)
        elif "fused" not in graphs:
            raise ReswiseError(
                f"{directory} was exported without the fused graph (cascade.onnx); export "
                "it again with this version, or run it with fused=False"
            )
        else:
            self.fused = self._load(directory, graphs["fused"], threads)

    @property
    def sessions(self) -> list[Any]:
        """One session per stage (with ``fused=True``, made only when first asked for)."""
        if self._sessions is None:
            directory, graphs, threads = self._stages
            self._sessions = [self._load(directory, g, threads) for g in graphs]
        return self._sessions

    def _load(self, directory: Path, graph: dict[str, Any], threads: int | None) -> Any:
        f = directory / graph["file"]
        if not f.is_file() or _sha256(f) != graph["sha256"]:
            raise ReswiseError(
                f"graph {f} is missing or differs from the one exported; export it again"
            )
        session = _session(f, threads)
        # the graph records what it was exported for: a policy.json edited since (a threshold
        # the fused graph has baked in, a chain, a FLOPs figure) is refused, not run
        check_graph(self.policy, session.get_modelmeta().custom_metadata_map, graph)
        return session

    def _images(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.size:
            raise ReswiseError(
                f"images must be N x 3 x {self.size[0]} x {self.size[1]} (the size the cascade "
                f"was exported for), got shape {x.shape}; resize them to that size first"
            )
        return np.ascontiguousarray(as_uint8(x))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits from the stage that answered each image, and that stage's resolution."""
        x = self._images(images)
        if self.fused is not None:
            logits, res = self.fused.run(None, {"images": x})
            return logits, res
        return self._route(x, max(len(x), 1))  # the whole call is one batch per stage

    def pooled(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``__call__``'s answers for many images, stage by stage: every stage runs full batches
        of ``batch_size`` over all the images that reach it (the ones earlier stages passed on,
        pooled across batches), as ``reswise serve`` does under load. Per batch, a later stage
        gets the few images one batch escalates, and small batches waste its threads."""
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ReswiseError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self._route(self._images(images), batch_size)

    def _route(self, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Checked images through the stages, each in batches of ``batch_size`` over the
        images that reach it; the images it is not confident on go on to the next."""
        n = len(x)
        idx = np.arange(n)
        logits: np.ndarray | None = None
        res = np.zeros(n, np.int64)
        for i, r in enumerate(self.chain):
            passed = []
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                out, stop = self.stage(i, x if len(part) == n else x[part])  # no copy: all
                if logits is None:
                    logits = np.empty((n, out.shape[1]), np.float32)
                logits[part[stop]], res[part[stop]] = out[stop], r
                passed.append(part[~stop])
            idx = np.concatenate(passed) if passed else idx[:0]
            if len(idx) == 0:
                break
        assert logits is not None
        return logits, res

    def stage(self, i: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``i``'s logits on checked images ``x`` (uint8 ``N x 3 x H x W``) and which of
        them it answers: confidence at least its threshold; the last stage answers every image.

        The one routing rule of the per-stage runner: ``__call__`` and the server's batcher
        (:mod:`reswise.ship.serve.batcher`, which pools escalated images across requests) call it.
        """
        out = self.sessions[i].run(None, {"images": x})[0]
        if i == len(self.chain) - 1:
            return out, np.ones(len(out), bool)
        return out, confidence(*softmax_stats(out), self.signal) >= self.thresholds[i]

    def reference(self, images: np.ndarray) -> np.ndarray:
        """Logits of the fixed reference resolution alone (what the cascade is timed against)."""
        if self._ref_session is None:
            self._ref_session = self._load(*self._reference)
        return self._ref_session.run(None, {"images": self._images(images)})[0]

    def classify_folder(self, folder: str | Path, batch_size: int = 64) -> list[dict[str, Any]]:
        """Every image file under ``folder`` (sorted): file, class, resolution, confidence."""
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ReswiseError(f"no image files under {folder}")
        rows = []
        for s in range(0, len(files), batch_size):
            batch = files[s : s + batch_size]
            logits, res = self(load_images(batch))
            top, _ = softmax_stats(logits)
            for f, lg, r, p in zip(batch, logits, res, top[:, 0]):
                k = int(lg.argmax())
                name = self.class_names[k] if self.class_names else str(k)
                rows.append({"file": str(f), "class": name, "resolution": int(r), "prob": float(p)})
        return rows


def as_uint8(x: np.ndarray) -> np.ndarray:
    """uint8 images as they are; float images checked to hold finite values in [0, 1], then
    rounded to uint8 (the graphs take uint8, as the sweep's records were made from).

    Float arrays holding 0..255 were clipped to white before the range was checked (10.9 %
    agreement with the uint8 answers on 64 real CIFAR-10 images); integer and boolean arrays
    are refused rather than guessed at (0..255? 0..65535? a mask?).
    """
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ReswiseError(
            f"images must be uint8 (0..255) or float in [0, 1], got {x.dtype}; convert them "
            "with .astype(np.uint8) if they hold 0..255, or divide by 255 for floats"
        )
    if not np.isfinite(x).all():
        raise ReswiseError(
            f"images hold {int(np.size(x) - np.isfinite(x).sum())} values that are not finite "
            "(NaN or inf); fix them at the source before classifying"
        )
    check_unit_range(float(x.min()), float(x.max()))
    return np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)


def check_unit_range(lo: float, hi: float) -> None:
    """Refuse float images outside [0, 1] (one line naming what they look like)."""
    if hi > 1 + 1e-6:
        raise ReswiseError(
            f"float images must lie in [0, 1], but the largest value is {hi:g}: looks like "
            "0..255; divide by 255 or pass uint8"
        )
    if lo < -1e-6:
        raise ReswiseError(
            f"float images must lie in [0, 1], but the smallest value is {lo:g}; pass them "
            "before any mean/std normalisation (the cascade normalises them itself)"
        )


def read_image(path: str | Path) -> np.ndarray:
    """One image file as ``H x W x 3`` uint8 RGB, decoded as the sweep decodes it
    (:func:`reswise.data.pixels.rgb8`), or a one-line error naming the file."""
    from PIL import Image

    from ..data.pixels import READ_ERRORS, ImageTooLarge, UnsupportedPixels, read_rgb8

    try:
        return read_rgb8(str(path))
    except ImageTooLarge as e:
        size = f"{e.size[0]} x {e.size[1]}" if e.size else "too many"
        raise ReswiseError(
            f"image {path} is too large ({size} pixels, over Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS}: a decompression bomb?); shrink it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        ) from None
    except UnsupportedPixels as e:
        raise ReswiseError(f"cannot read image {path}: {e}") from None
    except READ_ERRORS as e:
        raise ReswiseError(
            f"cannot read image {path} ({e.__class__.__name__}: {str(e)[:80]}); remove or "
            "replace the file"
        ) from None


def load_images(paths: list[str | Path]) -> np.ndarray:
    """Image files as one uint8 ``N x 3 x H x W`` array (RGB; all must share one size)."""
    from ..data.pixels import quiet_bomb_warnings

    with quiet_bomb_warnings():  # read_image refuses by size: Pillow's warning says it twice
        arrays = [read_image(p) for p in paths]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ReswiseError(f"images of several sizes ({sorted(sizes)[:3]}); resize them to one")
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()
