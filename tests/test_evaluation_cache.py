"""The evaluation cache is keyed on the evaluation's code too (issue 31): a change to generation, scoring or the
summaries makes a cached result stale instead of being reused."""
from causal_lib.core.run_folder import RunPaths
from causal_lib.config import config_from_dict
from causal_lib.evaluation import run


def test_every_file_of_the_code_version_exists():
    from pathlib import Path

    root = Path(run.__file__).resolve().parents[1]
    assert all((root / rel).is_file() for rel in run.EVALUATION_CODE), [
        rel for rel in run.EVALUATION_CODE if not (root / rel).is_file()]
    assert {"data/scoring.py", "evaluation/summary.py", "models/generate.py"} <= set(run.EVALUATION_CODE)


def test_code_version_follows_every_byte_of_the_listed_files(tmp_path):
    files = ("a.py", "sub/b.py")
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("def f():\n    return 0\n")
    v = run.code_version(files, tmp_path)
    assert v == run.code_version(files, tmp_path) and len(v) == 16  # deterministic
    (tmp_path / "sub" / "b.py").write_text("def f():\n    return 1\n")  # scoring changed
    v2 = run.code_version(files, tmp_path)
    assert v2 != v
    (tmp_path / "a.py").unlink()  # a file gone is a change too, not a silent skip
    assert run.code_version(files, tmp_path) not in (v, v2)


def test_the_cache_key_changes_with_the_code(tmp_path, monkeypatch):
    cfg = config_from_dict({"run": {"name": "cache-test"}})
    paths = RunPaths(tmp_path / "run")
    key = run._cache_key(cfg, paths, "none", "test")
    assert key == run._cache_key(cfg, paths, "none", "test")
    monkeypatch.setattr(run, "code_version", lambda *a, **k: "0123456789abcdef")
    assert run._cache_key(cfg, paths, "none", "test") != key  # changed code never reuses a stale result
