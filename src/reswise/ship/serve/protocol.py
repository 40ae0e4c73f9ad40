"""The Open Inference Protocol (KServe v2) over HTTP: request bodies in, tensors out, and tensors
back into response bodies. No model here: numpy and the standard library only.

    req = parse_infer(body, request.headers.get(HEADER_LENGTH))
    x = req.input("images")                      # Tensor: name, datatype, shape, data
    body, headers = encode_infer(model, "1", req.id, [Tensor("logits", "FP32", [2, 10], a)],
                                 binary={"logits"})

Both bodies of the protocol are read: plain JSON (``"data"`` lists) and the binary tensor
extension that ``tritonclient.http`` sends by default, where the JSON header is the first
``Inference-Header-Content-Length`` bytes and each input with a ``binary_data_size`` parameter
follows it, in order, as raw little-endian bytes (BYTES elements: a 4-byte length, then the
bytes). Every malformed body is a :class:`BadRequest` naming what is wrong and how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ReswiseError

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


class BadRequest(ReswiseError):
    """A request the server cannot answer as sent; ``status`` is its HTTP code (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    """One named tensor: a numpy array, or for BYTES a flat list of ``bytes``."""

    name: str
    datatype: str
    shape: list[int]
    data: Any


@dataclass
class Output:
    """An output the request asked for: in binary or JSON, and top-k (Triton's classification
    extension: ``"classification": k`` answers ``"value:index:label"`` strings)."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[Output] = field(default_factory=list)  # empty: the defaults
    binary_output: bool = False  # the request-wide "binary_data_output" parameter

    def input(self, name: str) -> Tensor:
        """The request's one input, which must be called ``name``."""
        names = [t.name for t in self.inputs]
        if names != [name]:
            raise BadRequest(
                f"the request has inputs {names}; send exactly one input named '{name}'"
            )
        return self.inputs[0]


def _header(body: bytes, length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary data behind it."""
    if length is None:
        head, rest = body, memoryview(b"")
    else:
        try:
            n = int(length)
        except ValueError:
            n = -1
        if not 0 < n <= len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} is {length!r} for a body of {len(body)} bytes; set it to the "
                "length of the JSON header that starts the body"
            )
        head, rest = body[:n], memoryview(body)[n:]
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        hint = "" if length else f" (binary tensors need the {HEADER_LENGTH} header)"
        raise BadRequest(
            f"the request body is not JSON ({e}){hint}; send a v2 infer request"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list):
        raise BadRequest('the request has no "inputs" list; send {"inputs": [{"name": ...}]}')
    return obj, rest


def _shape(spec: dict[str, Any]) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(
            f"input '{spec.get('name')}' has shape {shape!r}; give a list of non-negative integers"
        )
    return shape


def _bytes_elements(raw: memoryview, name: str) -> list[bytes]:
    """BYTES tensor data in the binary extension: each element a 4-byte length, then bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequest(f"input '{name}': BYTES data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise BadRequest(
                f"input '{name}': a BYTES element claims {n} bytes but only {len(raw) - at - 4} "
                "are left; the data is truncated"
            )
        out.append(bytes(raw[at + 4 : at + 4 + n]))
        at += 4 + n
    return out


def _json_bytes(data: Any, name: str) -> list[bytes]:
    """BYTES elements sent in JSON: base64 strings (raw image files are not UTF-8 text)."""
    flat = list(_flatten(data))
    try:
        return [base64.b64decode(s, validate=True) for s in flat]
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest(
            f"input '{name}': BYTES elements in JSON must be base64 strings; encode the files "
            "with base64, or send them in binary (the binary tensor extension)"
        ) from None


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for d in data:
            yield from _flatten(d)
    else:
        yield data


def _tensor(spec: Any, rest: memoryview, at: int) -> tuple[Tensor, int]:
    """One input of the request, and where the next one's binary data starts."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest('each input needs a "name", "datatype", "shape" and its data')
    name, dtype, shape = spec["name"], spec.get("datatype"), _shape(spec)
    if dtype != "BYTES" and dtype not in DTYPES:
        raise BadRequest(f"input '{name}' has datatype {dtype!r}; use one of the v2 datatypes")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    count = int(np.prod(shape, dtype=np.int64))
    if size is not None:
        if not isinstance(size, int) or size < 0 or at + size > len(rest):
            raise BadRequest(
                f"input '{name}' claims {size} bytes of binary data but {len(rest) - at} follow "
                "the header; the body is truncated or binary_data_size is wrong"
            )
        raw = rest[at : at + size]
        if dtype == "BYTES":
            data: Any = _bytes_elements(raw, name)
        else:
            want = count * np.dtype(DTYPES[dtype]).itemsize
            if size != want:
                raise BadRequest(
                    f"input '{name}': {size} bytes of binary data for shape {shape} of {dtype} "
                    f"(needs {want}); send the whole tensor"
                )
            data = np.frombuffer(raw, DTYPES[dtype]).reshape(shape)
        at += size
    elif "data" not in spec:
        raise BadRequest(f"input '{name}' has no \"data\" and no binary_data_size; send its data")
    elif dtype == "BYTES":
        data = _json_bytes(spec["data"], name)
    else:
        try:
            arr = np.asarray(spec["data"]).reshape(-1)
            data = arr.astype(DTYPES[dtype]) if arr.size else np.zeros(0, DTYPES[dtype])
        except (ValueError, TypeError):
            raise BadRequest(f"input '{name}': its data are not {dtype} numbers") from None
        if dtype != "FP32" and dtype != "FP64" and arr.size and not np.array_equal(arr, data):
            raise BadRequest(f"input '{name}': values out of range for {dtype}")
        if data.size != count:
            raise BadRequest(
                f"input '{name}' has {data.size} values for shape {shape} ({count}); send "
                "exactly one value per element"
            )
        data = data.reshape(shape)
    if dtype == "BYTES" and len(data) != count:
        raise BadRequest(f"input '{name}' has {len(data)} BYTES elements for shape {shape}")
    return Tensor(name, dtype, shape, data), at


def _outputs(obj: dict[str, Any]) -> list[Output]:
    wanted = obj.get("outputs") or []
    if not isinstance(wanted, list):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    out = []
    for o in wanted:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest('each requested output needs a "name"')
        params = o.get("parameters") or {}
        k = params.get("classification", 0)
        if not isinstance(k, int) or k < 0:
            raise BadRequest(f"output '{o['name']}': classification must be a count, got {k!r}")
        out.append(Output(o["name"], bool(params.get("binary_data", False)), k))
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """A v2 infer request from its body (and its ``Inference-Header-Content-Length`` header)."""
    obj, rest = _header(body, header_length)
    inputs, at = [], 0
    for spec in obj["inputs"]:
        t, at = _tensor(spec, rest, at)
        inputs.append(t)
    if at != len(rest):
        raise BadRequest(
            f"{len(rest) - at} bytes follow the last input's binary data; give every binary "
            "input its binary_data_size"
        )
    rid = obj.get("id")
    binary = bool((obj.get("parameters") or {}).get("binary_data_output", False))
    return InferRequest(None if rid is None else str(rid), inputs, _outputs(obj), binary)


def _raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in t.data)
    return np.ascontiguousarray(t.data, np.dtype(DTYPES[t.datatype]).newbyteorder("<")).tobytes()


def encode_infer(
    model: str, version: str, rid: str | None, outputs: list[Tensor], binary: set[str]
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: outputs named in ``binary`` go as raw bytes after the
    JSON header (with ``Inference-Header-Content-Length``), the others as JSON ``data``."""
    specs, blobs = [], []
    for t in outputs:
        spec: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.name in binary:
            blob = _raw(t)
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t.datatype == "BYTES":
            spec["data"] = [b.decode("utf-8") for b in t.data]
        else:
            spec["data"] = t.data.ravel().tolist()
        specs.append(spec)
    head = {"model_name": model, "model_version": version, "outputs": specs}
    if rid is not None:
        head["id"] = rid
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
    return text + b"".join(blobs), headers
