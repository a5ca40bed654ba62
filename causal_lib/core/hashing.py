"""The project's short hashes, written once: a hash of a JSON-able value (params, a recipe, a cache key) and
of bytes or a file.

Every function gives exactly the strings the call sites computed by hand before (issue 33): the hashes are kept
in manifests, run records and the shipped models, so the serialisation here must never change.

Standard library only, and nothing from causal_lib: any layer may import it without an import cycle.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def json_hash(obj, length: int | None = 16, default=None, ensure_ascii: bool = True, sort_keys: bool = True) -> str:
    """sha256 (hex, its first `length` characters; all 64 with length=None) of
    `json.dumps(obj, sort_keys=sort_keys, default=default, ensure_ascii=ensure_ascii)` encoded as UTF-8."""
    blob = json.dumps(obj, sort_keys=sort_keys, default=default, ensure_ascii=ensure_ascii)
    return bytes_hash(blob.encode(), length)


def bytes_hash(data: bytes, length: int | None = 16) -> str:
    """sha256 (hex) of `data`, its first `length` characters (all 64 with length=None)."""
    h = hashlib.sha256(data).hexdigest()
    return h if length is None else h[:length]


def file_sha256(path) -> str:
    """sha256 (64 hex) of a file's bytes, read in 4 MiB chunks (checkpoint weights can be large)."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
