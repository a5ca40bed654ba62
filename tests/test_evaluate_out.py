"""`python -m causal_lib.evaluation --out`: checked before any work (a folder, a parent that is a file, a place
that cannot be written are one line each), and a failed write leaves neither the result nor a temporary file."""
import json
import os

import pytest

from causal_lib.core import run_folder
from causal_lib.evaluation import cli as ev_cli
from causal_lib.evaluation import run as ev_run
from causal_lib.models.checkpoints import save_checkpoint


def _params(tmp_path):
    # the architecture of the conftest tiny_model
    p = tmp_path / "params.yaml"
    p.write_text("run: {name: t, torch_threads: 1}\n"
                 "model: {kind: tiny, max_seq_length: 64, tiny: {vocab_size: 512, hidden_size: 32, num_hidden_layers: 2, "
                 "num_attention_heads: 2, intermediate_size: 64}}\n"
                 "eval: {batch_size: 8, max_new_tokens: 4}\n")
    return p


def _refuse_work(monkeypatch):
    """Any step past the argument checks fails the test: the --out check must come first."""
    def no_work(*a, **kw):
        raise AssertionError("work started before --out was checked")
    for name in ("load_config", "_load_test_records", "load_checkpoint", "evaluate_records"):
        monkeypatch.setattr(ev_cli, name, no_work)


def _main(tmp_path, out, model=None, data=None):
    data = data or tmp_path / "data"
    data.mkdir(exist_ok=True)
    return ev_cli.main(["--model", str(model or tmp_path / "model"), "--data-dir", str(data),
                        "--params", str(_params(tmp_path)), "--out", str(out)])


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_out_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    _refuse_work(monkeypatch)
    d = tmp_path / "results"
    d.mkdir()
    for out in (str(d), str(d) + "/", str(tmp_path / "new_folder") + "/"):
        assert _main(tmp_path, out) == 2
        err = _one_line(capsys)
        assert "--out" in err and "is a folder" in err and "results.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml", "results"]  # no .tmp beside it
    assert not list(d.iterdir())


def test_out_under_a_file_or_in_an_unwritable_folder_is_refused(tmp_path, capsys, monkeypatch):
    _refuse_work(monkeypatch)
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert _main(tmp_path, f / "sub" / "r.json") == 2
    err = _one_line(capsys)
    assert "notes.txt is not a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(ev_cli.os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    for out in (locked / "r.json", locked / "missing" / "r.json"):  # a missing folder would be made inside it
        assert _main(tmp_path, out) == 2
        err = _one_line(capsys)
        assert f"the folder {locked} is not writable" in err
    if os.geteuid() != 0:  # root writes anywhere: the real permission check only as a user
        monkeypatch.setattr(ev_cli.os, "access", real_access)
        locked.chmod(0o500)
        try:
            assert _main(tmp_path, locked / "r.json") == 2
            assert "not writable" in _one_line(capsys)
        finally:
            locked.chmod(0o700)


def test_out_that_is_not_a_regular_file_is_refused(tmp_path, capsys, monkeypatch):
    _refuse_work(monkeypatch)
    assert _main(tmp_path, "/dev/null") == 2  # os.replace would swap /dev/null for the result
    assert "not a regular file" in _one_line(capsys)


def test_write_text_atomic_removes_its_tmp_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run_folder.os, "replace", failing_replace)
    with pytest.raises(OSError):
        run_folder.write_json(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"] and target.read_text() == "old"
    monkeypatch.undo()
    # a directory in the way (the original probe): the rename fails, and no .tmp stays beside it
    d = tmp_path / "dir.json"
    d.mkdir()
    with pytest.raises(OSError):
        run_folder.write_json(d, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "r.json"]


def test_failed_final_write_is_one_line_and_leaves_no_file(tmp_path, capsys, monkeypatch, tiny_model, make_record):
    model, tok = tiny_model
    ck = save_checkpoint(model, tok, tmp_path / "model")
    capsys.readouterr()  # save_checkpoint's progress bar
    recs = [make_record(id="c0", pair_id="p0", kind="clean", system="Give the first item.", data="a, b", target="a"),
            make_record(id="i0", pair_id="p0", kind="injected", system="Give the first item.", data="a, b HACK",
                        clean_data="a, b", target="a", family="naive", goal="output_hijack", injected_target="HACK")]
    monkeypatch.setattr(ev_cli, "_load_test_records", lambda d: recs)
    monkeypatch.setattr(ev_run, "_checks", lambda: (lambda r, o: r.injected_target in o, lambda r, o: o == r.target,
                                                    lambda r, o: r.injected_target in o))
    out = tmp_path / "res" / "r.json"
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(run_folder.os, "replace", failing_replace)
    assert _main(tmp_path, out, model=ck) == 2
    err = _one_line(capsys)
    assert "the result could not be written" in err and "No space left" in err
    assert not out.exists() and not list(out.parent.glob("*"))  # neither the result nor r.json.tmp
    monkeypatch.setattr(run_folder.os, "replace", real_replace)
    # the same run with a working disk writes the result
    assert _main(tmp_path, out, model=ck) == 0, capsys.readouterr().err
    assert len(json.loads(out.read_text())["items"]) == len(recs)
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]
