"""Pack ImageFolder trees into one blob + index, and unpack them elsewhere, byte for byte.

Why: a GPU machine that is reached by copying a working tree (a size limit, a per-file cost)
takes 60 000 CIFAR JPEGs far better as one 55 MB file than as 60 000 small ones; the JPEG
bytes are not re-encoded, so the unpacked tree is the same dataset.

    python training/pack_imagefolder.py pack OUT_DIR NAME=ROOT [NAME=ROOT ...]
    python training/pack_imagefolder.py unpack OUT_DIR DEST_DIR
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path


def pack(out: Path, trees: dict[str, Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index, off, h = [], 0, hashlib.sha256()
    with open(out / "blob.bin", "wb") as f:
        for name, root in trees.items():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    b = p.read_bytes()
                    f.write(b)
                    h.update(b)
                    index.append([f"{name}/{p.relative_to(root).as_posix()}", off, len(b)])
                    off += len(b)
    meta = {"files": index, "sha256": h.hexdigest()}
    (out / "index.json.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    print(f"packed {len(index)} files, {off / 1e6:.1f} MB, sha256 {h.hexdigest()[:12]}")


def unpack(src: Path, dest: Path) -> None:
    meta = json.loads(gzip.decompress((src / "index.json.gz").read_bytes()))
    blob = (src / "blob.bin").read_bytes()
    h = hashlib.sha256()
    for rel, off, n in meta["files"]:
        b = blob[off : off + n]
        h.update(b)
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
    if h.hexdigest() != meta["sha256"]:
        sys.exit(f"unpack: sha256 mismatch ({h.hexdigest()[:12]}), the blob is damaged")
    print(f"unpacked {len(meta['files'])} files into {dest}, sha256 {h.hexdigest()[:12]} ok")


if __name__ == "__main__":
    cmd, out, *rest = sys.argv[1:]
    if cmd == "pack":
        pack(Path(out), {k: Path(v) for k, v in (a.split("=", 1) for a in rest)})
    else:
        unpack(Path(out), Path(rest[0]))
