"""Files a run writes: atomic (never half-written), hashed, numpy arrays as npz."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A hidden temporary file beside ``path`` for the body to write (its name ends in ``suffix``,
    for writers that go by it: ``.onnx``), renamed onto ``path`` once the body succeeds: never
    half a file at ``path``, and whatever stops the body (a full disk, Ctrl-C, a failed export)
    the temporary file is removed.

    An OSError of the body names ``path``: a failed write names no file (ENOSPC comes from
    ``write``, which has no file name) or the temporary one, which is gone.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: never a half-written file,
    and no temporary file left behind when the write fails (a full disk, say)."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    write_atomic(path, buf.getvalue())


def jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
