"""The runner: order, variants, failure naming chapter and cell, resume, params-hash guard."""
import json

import pytest

from causal_lib import book
from causal_lib.book import BookError, Chapter, chapter_runs, run_book
from causal_lib.config import Config

OK_NB = '''# %% [markdown]
# # ok chapter
# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
defense = "none"
# %%
from causal_lib import chapter, reports
cfg, paths = chapter.start(params_file, overrides)
chapter.write_metrics(paths, f"ok_{defense}", {"defense": defense, "seed": cfg.run.seed})
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
    monkeypatch.setattr(book, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(book, "CHAPTERS", [
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
    monkeypatch.setattr(book, "execute_chapter", lambda run, cfg, pf, ov, paths: {"status": "ok", "wall_s": 0, "peak_rss_gb": 0})
    run_book("params/smoke.yaml", overrides=fake_book, only=["01"])
    with pytest.raises(BookError, match="other params"):
        run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"])
    # a different run name is fine
    run_book("params/smoke.yaml", overrides={**fake_book, "train.epochs": 3}, only=["01"], run_name="other")


def test_from_unknown_chapter_is_an_error(fake_book):
    with pytest.raises(BookError, match="no such chapter"):
        run_book("params/smoke.yaml", overrides=fake_book, from_chapter="42")
