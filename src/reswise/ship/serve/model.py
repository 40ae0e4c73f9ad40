"""The served cascade as clients see it: its name, metadata (inputs, outputs, the policy's
claim) and the output tensors made from the batcher's answers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime import OnnxCascade
from .protocol import BadRequest, Output, Tensor

INPUT = "images"  # named as the fused graph names them
OUTPUTS = ("logits", "resolution", "precision")
DEFAULT_OUTPUTS = ("logits", "resolution")  # the fused graph's own outputs
VERSION = "1"


class ServedModel:
    """``OnnxCascade`` plus what the protocol says about it."""

    def __init__(self, cascade: OnnxCascade, name: str | None = None) -> None:
        self.cascade = cascade
        policy = cascade.policy
        self.name = name or str(policy["model"])
        self.chain = list(cascade.chain)
        self.precision = list(policy.get("precision") or ["fp32"] * len(self.chain))
        self.size: tuple[int, int] = (int(cascade.size[0]), int(cascade.size[1]))
        self.class_names = cascade.class_names
        dim = cascade.sessions[0].get_outputs()[0].shape[1]
        self.n_classes = dim if isinstance(dim, int) else len(self.class_names or []) or -1

    def stages_text(self) -> str:
        return ", ".join(
            f"{r}" if p == "fp32" else f"{r}/{p}" for r, p in zip(self.chain, self.precision)
        )

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/{name}``: the v2 fields, and the policy's claim as parameters."""
        h, w = self.size
        p = self.cascade.policy
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "reswise_cascade",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, h, w, 3]}],
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [-1, self.n_classes]},
                {"name": "resolution", "datatype": "INT64", "shape": [-1]},
                {"name": "precision", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "input_layouts": [
                    f"UINT8 [-1, {h}, {w}, 3]",
                    f"UINT8 [-1, 3, {h}, {w}]",
                    f"BYTES [-1] (JPEG/PNG files of {w} x {h} pixels)",
                ],
                "class_names": self.class_names,
                "model": p["model"],
                "weights": p["weights"].get("name"),
                "chain": self.chain,
                "precision": self.precision,
                "signal": p["signal"],
                "thresholds": p["thresholds"],
                "reference": p["reference"],
                "heldout": p["heldout"],  # the claim: top-1, drop and its CI, FLOPs saved
                "budget": p["budget"],
            },
        }

    def outputs(
        self, wanted: list[Output], binary_output: bool, logits: np.ndarray, stage: np.ndarray
    ) -> tuple[list[Tensor], set[str]]:
        """The requested output tensors (default: logits and resolution) and which go binary."""
        wanted = wanted or [Output(n) for n in DEFAULT_OUTPUTS]
        n, out = len(logits), []
        for o in wanted:
            if o.name not in OUTPUTS:
                raise BadRequest(f"unknown output '{o.name}'; ask for {', '.join(OUTPUTS)}")
            if o.classification and o.name != "logits":
                raise BadRequest(f"classification applies to 'logits', not to '{o.name}'")
            if o.name == "logits" and o.classification:
                k = min(o.classification, logits.shape[1])
                out.append(Tensor("logits", "BYTES", [n, k], self.top_strings(logits, k)))
            elif o.name == "logits":
                out.append(Tensor("logits", "FP32", list(logits.shape), logits))
            elif o.name == "resolution":
                out.append(Tensor("resolution", "INT64", [n], np.asarray(self.chain)[stage]))
            else:
                out.append(Tensor("precision", "BYTES", [n], [self.precision[s].encode() for s in stage]))  # fmt: skip
        return out, {o.name for o in wanted if o.binary or binary_output}

    def label(self, k: int) -> str:
        return self.class_names[k] if self.class_names else str(k)

    def top_strings(self, logits: np.ndarray, k: int) -> list[bytes]:
        """Triton's classification extension: per image its ``k`` best as
        ``"value:index:label"`` (the output's value, here the logit), best first."""
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return [
            f"{logits[r, j]:f}:{j}:{self.label(j)}".encode()
            for r in range(len(logits))
            for j in idx[r]
        ]

    def classify_one(self, logits: np.ndarray, stage: int, top_k: int) -> dict[str, Any]:
        """``POST /v1/classify``'s answer for one image: class, probability, who answered."""
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = np.argsort(-p, kind="stable")
        k = int(best[0])
        row: dict[str, Any] = {
            "class": self.label(k),
            "index": k,
            "prob": float(p[k]),
            "resolution": self.chain[stage],
            "precision": self.precision[stage],
        }
        if top_k:
            row["top"] = [
                {"class": self.label(int(j)), "index": int(j), "prob": float(p[j])}
                for j in best[:top_k]
            ]
        return row
