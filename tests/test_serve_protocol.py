"""The Open Inference Protocol v2 bodies alone (no server, no model): JSON and the binary tensor
extension parsed into tensors and written back, and malformed bodies refused in one line."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from reswise.ship.serve.images import images_from
from reswise.ship.serve.protocol import (
    HEADER_LENGTH,
    BadRequest,
    Tensor,
    encode_infer,
    parse_infer,
)


def binary_body(inputs: list[tuple[str, str, list[int], bytes]], **extra) -> tuple[bytes, str]:
    """A binary-extension request as tritonclient writes one: JSON header, then raw tensors."""
    head = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in inputs
        ],
        **extra,
    }
    text = json.dumps(head).encode()
    return text + b"".join(raw for *_, raw in inputs), str(len(text))


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def test_json_and_binary_uint8_give_the_same_images():
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    as_json = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [2, 4, 4, 3],
                    "data": x.ravel().tolist(),
                }
            ],
        }  # fmt: skip
    ).encode()
    a = parse_infer(as_json, None)
    body, length = binary_body([("images", "UINT8", [2, 4, 4, 3], x.tobytes())])
    b = parse_infer(body, length)
    assert a.id == "r1" and b.id is None
    for req in (a, b):
        got = images_from(req.input("images"), (4, 4))
        assert got.shape == (2, 3, 4, 4) and np.array_equal(got, x.transpose(0, 3, 1, 2))
    # the graphs' own layout is taken as it is
    chw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    body, length = binary_body([("images", "UINT8", [2, 3, 4, 4], chw.tobytes())])
    assert np.array_equal(images_from(parse_infer(body, length).input("images"), (4, 4)), chw)


def test_bytes_elements_in_binary_and_base64_json():
    body, length = binary_body([("images", "BYTES", [2], bytes_elements(b"ab", b""))])
    assert parse_infer(body, length).input("images").data == [b"ab", b""]
    text = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(b"\xff\xd8jpeg").decode()],
                }
            ]
        }  # fmt: skip
    ).encode()
    assert parse_infer(text, None).input("images").data == [b"\xff\xd8jpeg"]


def test_requested_outputs_binary_and_classification():
    text = json.dumps(
        {
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [0], "data": []}],
            "outputs": [
                {"name": "logits", "parameters": {"classification": 3}},
                {"name": "resolution", "parameters": {"binary_data": True}},
            ],
            "parameters": {"binary_data_output": False},
        }  # fmt: skip
    ).encode()
    req = parse_infer(text, None)
    assert [(o.name, o.binary, o.classification) for o in req.outputs] == [
        ("logits", False, 3), ("resolution", True, 0)
    ]  # fmt: skip
    assert not req.binary_output


def test_responses_round_trip_json_and_binary():
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    res = np.array([20, 32], np.int64)
    outs = [Tensor("logits", "FP32", [2, 3], logits), Tensor("resolution", "INT64", [2], res),
            Tensor("precision", "BYTES", [2], [b"int8", b"fp32"])]  # fmt: skip
    body, headers = encode_infer("m", "1", "r7", outs, binary=set())
    obj = json.loads(body)
    assert headers["content-type"] == "application/json" and obj["id"] == "r7"
    assert obj["outputs"][0]["data"] == logits.ravel().tolist()
    assert obj["outputs"][2]["data"] == ["int8", "fp32"]
    body, headers = encode_infer("m", "1", None, outs, binary={"logits", "precision"})
    n = int(headers[HEADER_LENGTH])
    head, rest = json.loads(body[:n]), body[n:]
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
    assert sizes == [24, None, 16] and head["outputs"][1]["data"] == [20, 32]
    assert np.array_equal(np.frombuffer(rest[:24], np.float32).reshape(2, 3), logits)
    assert rest[24:] == bytes_elements(b"int8", b"fp32")


def _json(**inp) -> bytes:
    spec = {"name": "images", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}
    return json.dumps({"inputs": [{**spec, **inp}]}).encode()


@pytest.mark.parametrize(
    "body, length, match",
    [
        (b"\x89PNG not json", None, "not JSON .*Inference-Header-Content-Length"),
        (b'{"id": 1}', None, 'no "inputs" list'),
        (_json(shape=[1, 2, 2]), None, "12 values for shape"),
        (_json(shape="2x2"), None, "list of non-negative integers"),
        (_json(datatype="UINT9"), None, "datatype 'UINT9'"),
        (_json(data=[300] * 12), None, "out of range for UINT8"),
        (_json(data=["a"] * 12), None, "not UINT8 numbers"),
        (_json(data=None).replace(b', "data": null', b""), None, 'no "data"'),
        (b'{"inputs": []}', "999", "Inference-Header-Content-Length is '999'"),
        (*binary_body([("images", "UINT8", [1, 2, 2, 3], b"\0" * 12)])[:1], None, "not JSON"),
        (binary_body([("images", "UINT8", [1, 2, 2, 3], b"\0" * 12)])[0][:-7],
         binary_body([("images", "UINT8", [1, 2, 2, 3], b"\0" * 12)])[1], "truncated"),
        (*binary_body([("images", "UINT8", [1, 2, 2], b"\0" * 12)]), "12 bytes of binary data"),
        (b'{"inputs": []}' + b"\0" * 3, "14", "3 bytes follow"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_refused_in_one_line(body: bytes, length: str | None, match: str):
    with pytest.raises(BadRequest, match=match) as e:
        parse_infer(body, length)
    assert "\n" not in str(e.value) and e.value.status == 400


def test_truncated_bytes_elements_and_wrong_inputs_are_refused():
    raw = bytes_elements(b"abcdef")[:-2]
    body, length = binary_body([("images", "BYTES", [1], raw)])
    with pytest.raises(BadRequest, match="claims 6 bytes but only 4"):
        parse_infer(body, length)
    body, length = binary_body([("pixels", "UINT8", [1], b"\0")])
    with pytest.raises(BadRequest, match="exactly one input named 'images'"):
        parse_infer(body, length).input("images")
    x = np.zeros((1, 5, 5, 3), np.float32)
    for t, match in (
        (Tensor("images", "FP32", [1, 5, 5, 3], x), "is FP32; send UINT8"),
        (Tensor("images", "UINT8", [1, 5, 5, 3], x.astype(np.uint8)), r"shape \[1, 5, 5, 3\]"),
        (Tensor("images", "UINT8", [0, 4, 4, 3], np.zeros((0, 4, 4, 3), np.uint8)), "no images"),
        (Tensor("images", "BYTES", [1, 2], [b"a", b"b"]), r"BYTES input 'images' has shape"),
    ):
        with pytest.raises(BadRequest, match=match):
            images_from(t, (4, 4))
