"""core.hashing gives, to the letter, the strings the call sites computed by hand before issue 33 (params and
recipe hashes, data and world fingerprints, cache keys, the frozen test content's digests, file sha256s): the
values below were computed with the old expressions and are kept in manifests and shipped models."""
import hashlib
import json
from pathlib import PurePosixPath

from causal_lib.core import hashing
from causal_lib.core.hashing import bytes_hash, file_sha256, json_hash

PLAIN = {"b": 1, "a": [1, 2.5, None, True], "c": {"y": "x", "x": "y"}}
UNICODE = {"name": "café", "emoji": "☕"}
WITH_PATH = {"path": PurePosixPath("/tmp/x"), "n": 3}
LIST = [["a", 1], ("train", 0.8)]


def test_json_hash_pinned_values():
    # hashlib.sha256(json.dumps(X, sort_keys=True).encode()).hexdigest()[:16]: params, recipe and data hashes
    assert json_hash(PLAIN) == "e94c437f9fd98eb8"
    assert json_hash(UNICODE) == "05533403f65601af"
    # ... default=str: checkpoint config/tokenizer hashes, the world fingerprint
    assert json_hash(WITH_PATH, default=str) == "f2a9025106cdd333"
    # ... ensure_ascii=False, default=str, all 64 characters: the frozen test content's digests
    assert json_hash(UNICODE, length=None, default=str, ensure_ascii=False) == \
        "5c15ffbe8c6934269a908a91b6167a5751ba773323b2740838246baf9342920b"
    # json.dumps(key) without sort_keys: the realistic items' fingerprints
    assert json_hash(LIST, sort_keys=False) == "2795d4d80b0a7885"


def test_json_hash_equals_the_old_expressions():
    for obj in (PLAIN, UNICODE, LIST, {"z": {"b": [1, {"d": 2, "c": 1}]}, "a": "ü"}):
        assert json_hash(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
        assert json_hash(obj, default=str) == \
            hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
        assert json_hash(obj, length=None, default=str, ensure_ascii=False) == hashlib.sha256(
            json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
    # without sort_keys the order of a dict's keys counts
    assert json_hash({"b": 1, "a": 2}, sort_keys=False) != json_hash({"a": 2, "b": 1}, sort_keys=False)
    assert json_hash({"b": 1, "a": 2}) == json_hash({"a": 2, "b": 1})


def test_bytes_and_file_hashes(tmp_path):
    assert bytes_hash(b"hello world\n") == "a948904f2f0f479b"
    full = "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447"
    assert bytes_hash(b"hello world\n", length=None) == full
    p = tmp_path / "f.txt"
    p.write_bytes(b"hello world\n")
    assert file_sha256(p) == full == hashlib.sha256(p.read_bytes()).hexdigest()
    big = tmp_path / "big.bin"  # over one 4 MiB chunk
    data = bytes(range(256)) * ((1 << 22) // 256 + 7)
    big.write_bytes(data)
    assert file_sha256(str(big)) == hashlib.sha256(data).hexdigest()
