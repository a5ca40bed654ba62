"""The runner: order, variants, failure naming chapter and cell, resume (source and params hashes), params-hash guard."""
import hashlib
import json
from pathlib import Path

import pytest


from causal_lib.book import runner
from causal_lib.book.runner import BookError, Chapter, chapter_runs, run_book
from causal_lib.config import Config

OK_NB = '''# %% [markdown]
# # ok chapter
# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
defense = "none"
# %%
from causal_lib.book import reports, run_folder
cfg, paths = run_folder.start(params_file, overrides)
run_folder.write_metrics(paths, f"ok_{defense}", {"defense": defense, "seed": cfg.run.seed})
reports.record_verdict(paths, "01_ok", "PASS", "fine")
print("value", 42)
'''
FAIL_NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
# %%
x = 1
# %%
raise ValueError("boom in the chapter")
'''


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_ok.py").write_text(OK_NB)
    (nbdir / "02_variants.py").write_text(OK_NB)
    (nbdir / "03_fail.py").write_text(FAIL_NB)
    (nbdir / "04_after.py").write_text(OK_NB)
    monkeypatch.setattr(runner, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(runner, "CHAPTERS", [
        Chapter("01_ok"),
        Chapter("02_variants", variants=lambda cfg: [("a", {"defense": "a"}), ("b", {"defense": "b"})]),
        Chapter("03_fail"),
        Chapter("04_after"),
    ])
    return {"run.output_root": str(tmp_path / "outputs")}


def test_chapter_list_is_complete_and_variants_follow_defenses():
    labels = [r.label for r in chapter_runs(Config())]
    assert labels[0] == "01_setup_check" and labels[-1] == "09_phase2_report"
    assert "05_train[causal]" in labels and "05_train[struq]" in labels and "05_train[secalign]" in labels
    assert [int(r.chapter.number) for r in chapter_runs(Config())] == sorted(int(r.chapter.number) for r in chapter_runs(Config()))


@pytest.mark.slow
def test_failure_names_chapter_and_cell_and_keeps_earlier_outputs(fake_book, tmp_path):
    with pytest.raises(BookError) as e:
        run_book("params/smoke.yaml", overrides=fake_book)
    msg = str(e.value)
    assert "03_fail" in msg and "raise ValueError" in msg and "ValueError: boom in the chapter" in msg and "--from 03" in msg
    run_dir = tmp_path / "outputs" / "smoke"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["chapters"]["01_ok"]["status"] == "ok"
    assert state["chapters"]["02_variants[b]"]["status"] == "ok"
    assert state["chapters"]["03_fail"]["status"] == "failed"
    assert "04_after" not in state["chapters"]
    # variants ran with their own parameters, earlier outputs kept, partial notebook rendered too
    assert json.loads((run_dir / "metrics" / "ok_b.json").read_text())["defense"] == "b"
    for name in ("01_ok", "02_variants__a", "02_variants__b", "03_fail"):
        assert (run_dir / "notebooks" / f"{name}.ipynb").exists()
        assert (run_dir / "html" / f"{name}.html").exists()
    index = (run_dir / "html" / "index.html").read_text()
    assert "01_ok.html" in index and "PASS" in index and "FAILED" in index
    assert state["chapters"]["01_ok"]["peak_rss_gb"] > 0.01  # the kernel's memory was measured

    # --resume reruns only what did not finish ok; --from starts where asked
    (tmp_path / "notebooks" / "03_fail.py").write_text(OK_NB)
    mtime = (run_dir / "notebooks" / "01_ok.ipynb").stat().st_mtime
    state = run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert (run_dir / "notebooks" / "01_ok.ipynb").stat().st_mtime == mtime
    assert state["chapters"]["04_after"]["status"] == "ok"


def test_refuses_to_mix_params_in_one_run_folder(fake_book, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "execute_chapter", lambda run, cfg, pf, ov, paths, **kw: {"status": "ok", "wall_s": 0, "peak_rss_gb": 0})
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"])
    with pytest.raises(BookError, match="other params"):
        run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"])
    # a different run name is fine
    run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"], run_name="other")


def test_from_unknown_chapter_is_an_error(fake_book):
    with pytest.raises(BookError, match="no such chapter"):
        run_book("params/smoke.yaml", overrides=fake_book, from_chapter="42")


def test_seed_replicas_run_before_the_main_seed_in_their_own_folder():
    from causal_lib.config import config_from_dict

    cfg = config_from_dict({"run": {"seed": 0, "seeds": [1, 2]}})
    runs = chapter_runs(cfg)
    labels = [r.label for r in runs]
    for stem in ("04_base_model", "05_train[causal]", "06_epoch_validation[struq]", "08_attack_evaluation"):
        i = labels.index(stem)
        assert labels[i - 2:i] == [f"{stem}@seed1", f"{stem}@seed2"], labels
    assert not any(lb.startswith(("01", "02", "03", "07", "09")) and "@" in lb for lb in labels)
    replica = next(r for r in runs if r.label == "05_train[causal]@seed2")
    ov = replica.overrides(cfg, {"run.output_root": "/x"})
    assert ov == {"run.output_root": "/x", "run.seed": 2, "run.seeds": [], "data.seed": 0,
                  "run.name": "default/seeds/seed_2"}
    sub = config_from_dict({"run": {"seed": 0, "seeds": [1, 2]}}, ov)
    from causal_lib.data.build import data_hash
    assert data_hash(sub) == data_hash(cfg)  # the replica trains on the main run's data and test set
    assert sub.run_dir == Path("/x") / "default" / "seeds" / "seed_2"
    main = next(r for r in runs if r.label == "05_train[causal]")
    assert main.overrides(cfg, {"a": 1}) == {"a": 1} and replica.out_stem == "05_train__causal__seed2"
    from causal_lib.book.run_folder import split_replica_label
    assert split_replica_label(replica.label) == ("05_train[causal]", 2)
    assert split_replica_label("07_causal_verification") == ("07_causal_verification", None)


@pytest.mark.parametrize("seeds", [[0, 1], [1, 1]])
def test_seeds_must_be_distinct_extras(seeds):
    from causal_lib.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="run.seeds"):
        config_from_dict({"run": {"seed": 0, "seeds": seeds}})


@pytest.fixture
def fake_runs(fake_book, monkeypatch):
    """The fake book with a stand-in for papermill: records which chapter runs executed, each 'ok'."""
    ran = []

    def execute(run, cfg, pf, ov, paths, **kw):
        ran.append(run.label)
        return {"label": run.label, "status": "ok", "error": None, "wall_s": 0, "peak_rss_gb": 0}

    monkeypatch.setattr(runner, "execute_chapter", execute)
    return ran


def test_resume_skips_unchanged_ok_chapters_and_records_hashes(fake_book, fake_runs, tmp_path, capsys):
    state = run_book("params/smoke.yaml", overrides=fake_book)
    assert fake_runs == ["01_ok", "02_variants[a]", "02_variants[b]", "03_fail", "04_after"]
    rec = state["chapters"]["02_variants[a]"]
    assert len(rec["source_hash"]) == 16 and len(rec["chapter_params_hash"]) == 16
    # the per-chapter params hash sees the chapter run's own parameters (defense a vs b)
    assert rec["chapter_params_hash"] != state["chapters"]["02_variants[b]"]["chapter_params_hash"]
    assert rec["source_hash"] == state["chapters"]["01_ok"]["source_hash"]  # same file bytes
    on_disk = json.loads((tmp_path / "outputs" / "smoke" / "metrics" / "chapters.json").read_text())
    assert on_disk["01_ok"]["source_hash"] == state["chapters"]["01_ok"]["source_hash"]
    capsys.readouterr()
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == []
    out = capsys.readouterr().out
    for label in ("01_ok", "02_variants[a]", "02_variants[b]", "03_fail", "04_after"):
        assert f"{label}: skipped: ok, unchanged" in out


def test_resume_reruns_a_chapter_whose_source_or_params_changed(fake_book, fake_runs, tmp_path, monkeypatch, capsys):
    run_book("params/smoke.yaml", overrides=fake_book)
    src = tmp_path / "notebooks" / "03_fail.py"
    src.write_text(src.read_text() + "\n# %%\nprint('edited')\n")
    capsys.readouterr()
    fake_runs.clear()
    state = run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    out = capsys.readouterr().out
    assert fake_runs == ["03_fail"]  # nothing after it is invalidated automatically
    assert "03_fail: source changed since it ran, running again" in out
    assert "04_after: skipped: ok, unchanged" in out
    assert state["chapters"]["03_fail"]["source_hash"] == hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    # the new hash was recorded: a second --resume skips it
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == []

    # a chapter run's own parameters (papermill parameters such as `defense`) count as its params
    monkeypatch.setattr(runner, "CHAPTERS", [
        Chapter("01_ok"),
        Chapter("02_variants", variants=lambda cfg: [("a", {"defense": "a", "extra": 1}), ("b", {"defense": "b"})]),
        Chapter("03_fail"),
        Chapter("04_after"),
    ])
    capsys.readouterr()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    assert fake_runs == ["02_variants[a]"]
    assert "02_variants[a]: params changed since it ran, running again" in capsys.readouterr().out


def test_resume_reruns_failed_and_old_records_without_hashes(fake_book, fake_runs, tmp_path, capsys):
    run_book("params/smoke.yaml", overrides=fake_book)
    run_json = tmp_path / "outputs" / "smoke" / "run.json"
    state = json.loads(run_json.read_text())
    for k in ("source_hash", "chapter_params_hash"):  # a record written before the hashes were kept
        del state["chapters"]["01_ok"][k]
    state["chapters"]["02_variants[b]"]["status"] = "failed"
    del state["chapters"]["04_after"]
    run_json.write_text(json.dumps(state))
    capsys.readouterr()
    fake_runs.clear()
    run_book("params/smoke.yaml", overrides=fake_book, resume=True)
    out = capsys.readouterr().out
    assert fake_runs == ["01_ok", "02_variants[b]", "04_after"]
    assert "01_ok: recorded without source/params hashes (an older run record), running again" in out
    assert "02_variants[b]: last run failed, running again" in out
    assert "04_after: not run in this folder yet, running" in out
    assert "03_fail: skipped: ok, unchanged" in out
