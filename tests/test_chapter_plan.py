"""The chapters' table (book.chapters: upstream chapters, products, labels) and --resume rerunning what read a
changed upstream product (book.plan), on a fake book whose chapter runs only write their products."""
import json
import os
import re

import pytest

from causal_lib.book import chapters, plan, runner
from causal_lib.book.chapters import (CHAPTERS, Chapter, chapter_label, chapter_runs, label_file_stem, parse_label,
                                      table_problems, upstream_runs)
from causal_lib.book.runner import run_book
from causal_lib.config import PROJECT_ROOT, Config, config_from_dict

# ---- (a) the table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [[], [1, 2]])
def test_every_upstream_is_a_chapter_before_it_and_every_product_a_path_in_the_run_folder(seeds):
    cfg = config_from_dict({"run": {"seed": 0, "seeds": seeds}})
    runs = chapter_runs(cfg)
    assert table_problems(CHAPTERS, runs) == []
    stems = [c.stem for c in CHAPTERS]
    for ch in CHAPTERS:
        assert ch.products, f"{ch.stem} declares no product"
        for up in ch.upstream:
            stem = up.removesuffix(chapters.SEED_REPLICAS)
            assert stem in stems and stems.index(stem) <= stems.index(ch.stem), (ch.stem, up)
    order = [r.label for r in runs]
    for r in runs:
        ups = upstream_runs(r, runs)
        assert all(order.index(u.label) < order.index(r.label) for u in ups), r.label
        assert {u.chapter.stem for u in ups} >= {u for u in r.chapter.upstream if not u.endswith("@seeds")}, r.label
        for p in r.products():
            assert "{" not in p and not p.startswith("/") and ".." not in p, (r.label, p)


def test_variants_read_their_own_variant_and_replicas_their_own_seed():
    cfg = config_from_dict({"run": {"seed": 0, "seeds": [1, 2]}})
    runs = chapter_runs(cfg)
    by = {r.label: r for r in runs}
    labels = lambda label: [u.label for u in upstream_runs(by[label], runs)]
    assert labels("06_epoch_validation[causal]") == ["02_dataset_validation", "05_train[causal]"]
    assert labels("05_train[struq]@seed1") == ["02_dataset_validation", "04_base_model@seed1"]
    assert {"05_train[secalign]", "06_epoch_validation[struq]"} <= set(labels("07_causal_verification"))
    assert not any("@seed" in u for u in labels("07_causal_verification"))
    main08 = labels("08_attack_evaluation")
    assert {"08_attack_evaluation@seed1", "08_attack_evaluation@seed2", "05_train[causal]"} <= set(main08)
    assert not any("@seed" in u for u in main08 if not u.startswith("08"))
    assert not any(u.startswith("08") for u in labels("08_attack_evaluation@seed1"))
    assert by["05_train[causal]@seed2"].products()[0] == "checkpoints/causal"
    assert by["05_train[causal]@seed2"].folder(PROJECT_ROOT / "x") == PROJECT_ROOT / "x" / "seeds" / "seed_2"


def test_table_problems_are_found():
    bad = [Chapter("01_a", upstream=("02_b",)), Chapter("02_b", products=("../x", "metrics/{defense}.json")),
           Chapter("03_c", upstream=("02_b@seeds", "nope"))]
    runs = [chapters.ChapterRun(c, c.stem) for c in bad]
    problems = "\n".join(table_problems(bad, runs))
    assert "01_a: upstream 02_b is not a chapter before it" in problems
    assert "02_b: product ../x is not a path inside the run folder" in problems
    assert "02_b: products name ['defense']" in problems
    assert "03_c: upstream 02_b@seeds" in problems and "03_c: upstream nope" in problems


def test_labels_round_trip_through_build_and_parse():
    cfg = config_from_dict({"run": {"seed": 0, "seeds": [1, 12]}})
    for r in chapter_runs(cfg):
        stem, variant, seed = parse_label(r.label)
        assert chapter_label(stem, variant, seed) == r.label and stem == r.chapter.stem and seed == r.seed
        assert variant == r.parameters.get("defense")
    assert chapter_label("05_train", "causal", 1) == "05_train[causal]@seed1"
    assert parse_label("05_train[causal]@seed1") == ("05_train", "causal", 1)
    assert parse_label("08_attack_evaluation@seed0") == ("08_attack_evaluation", None, 0)
    assert label_file_stem("05_train[causal]@seed1") == "05_train__causal__seed1"
    assert label_file_stem("07_causal_verification") == "07_causal_verification"
    for junk in ("05_train[causal", "05_train[]", "a@seedx", "", "05[a][b]"):
        with pytest.raises(ValueError, match="not a chapter run's label"):
            parse_label(junk)


def test_no_notebook_types_the_label_format():
    """Notebooks record verdicts under chapters.chapter_label(...), never an f-string of their own."""
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("0*.py")):
        typed = re.findall(r"""["']\d\d_\w+\[|@seed\{""", nb.read_text())
        assert not typed, (nb.name, typed)


def test_product_digest_content_for_small_files_size_and_mtime_for_large(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "SMALL_FILE", 10)
    (tmp_path / "m").mkdir()
    small, big = tmp_path / "m" / "a.json", tmp_path / "m" / "big.bin"
    small.write_text("{}")
    big.write_bytes(b"x" * 100)
    (tmp_path / "m" / ".big.tmp").write_text("ignored")
    d = plan.product_digest(tmp_path, "m")
    assert len(d) == 16 and d == plan.product_digest(tmp_path, "m")
    os.utime(small, ns=(1, 1))  # a small file: its content counts, not its time
    assert plan.product_digest(tmp_path, "m") == d
    big.write_bytes(b"y" * 100)  # a large one: size and time, not content
    os.utime(big, ns=(5, 5))
    d2 = plan.product_digest(tmp_path, "m")
    assert d2 != d
    os.utime(big, ns=(6, 6))
    assert plan.product_digest(tmp_path, "m") != d2
    (tmp_path / "m" / ".other.tmp").write_text("ignored too")
    assert plan.product_digest(tmp_path, "m/*.json") == plan.product_digest(tmp_path, "m/a.json")
    assert plan.product_digest(tmp_path, "nothing/*") == plan.MISSING


# ---- (b) --resume after an upstream product changed ----------------------------------------------------------

NB = '''# %% tags=["parameters"]
params_file = "params/smoke.yaml"
overrides = {}
'''
FAKE = [Chapter("01_data", products=("metrics/data.json", "data/*.jsonl")),
        Chapter("02_train", variants=lambda cfg: [("a", {"defense": "a"}), ("b", {"defense": "b"})],
                upstream=("01_data",), products=("metrics/train_{defense}.json", "checkpoints/{defense}")),
        Chapter("03_eval", upstream=("01_data", "02_train"), products=("metrics/eval.json",)),
        Chapter("04_other", products=("metrics/other.json",))]


@pytest.fixture
def plan_book(tmp_path, monkeypatch):
    """tests/test_book.py's fake book and fake_runs, with upstream chapters and products: a chapter run 'executes'
    by writing its products (the same bytes every time) and is recorded ok."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for ch in FAKE:
        (nbdir / f"{ch.stem}.py").write_text(NB)
    monkeypatch.setattr(chapters, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(chapters, "CHAPTERS", FAKE)
    ran = []

    def execute(run, cfg, pf, ov, paths, **kw):
        ran.append(run.label)
        for p in run.products():
            f = run.folder(paths.root) / p.replace("*", "split")
            if p.startswith("checkpoints/"):
                f = f / "weights.bin"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"written by {run.label}")
        return {"label": run.label, "status": "ok", "error": None, "wall_s": 0, "peak_rss_gb": 0}

    monkeypatch.setattr(runner, "execute_chapter", execute)
    return {"ran": ran, "root": tmp_path / "outputs" / "smoke", "nbdir": nbdir,
            "overrides": {"run.output_root": str(tmp_path / "outputs")}}


def _resume(book, capsys) -> str:
    capsys.readouterr()
    book["ran"].clear()
    run_book("params/smoke.yaml", overrides=book["overrides"], resume=True)
    return capsys.readouterr().out


def test_resume_reruns_the_dependents_of_a_changed_upstream_product_and_says_why(plan_book, capsys):
    book, root = plan_book, plan_book["root"]
    state = run_book("params/smoke.yaml", overrides=book["overrides"])
    assert book["ran"] == ["01_data", "02_train[a]", "02_train[b]", "03_eval", "04_other"]
    rec = state["chapters"]["03_eval"]
    assert set(rec["upstream_products"]) == {"01_data", "02_train[a]", "02_train[b]"}
    assert set(rec["upstream_products"]["02_train[b]"]) == {"metrics/train_b.json", "checkpoints/b"}
    assert "upstream_hash" not in state["chapters"]["01_data"]  # reads nothing
    shared = json.loads((root / "metrics" / "chapters.json").read_text())
    assert "upstream_hash" not in shared["03_eval"] and shared["03_eval"]["source_hash"] == rec["source_hash"]
    assert json.loads((root / "run.json").read_text())["chapters"]["03_eval"]["upstream_hash"] == rec["upstream_hash"]

    out = _resume(book, capsys)
    assert book["ran"] == []
    assert all(f"{label}: skipped: ok, unchanged" in out for label in ("01_data", "02_train[a]", "03_eval"))

    # a product of 01 changed: what reads it runs again, and so does what reads those; 01 itself and 04 do not
    (root / "metrics" / "data.json").write_text("edited by hand")
    out = _resume(book, capsys)
    assert book["ran"] == ["02_train[a]", "02_train[b]", "03_eval"]
    assert "02_train[a]: upstream product metrics/data.json of 01_data changed since it ran, running again" in out
    assert "03_eval: upstream 02_train[a] runs again before it, running again" in out
    assert "01_data: skipped: ok, unchanged" in out and "04_other: skipped: ok, unchanged" in out
    _resume(book, capsys)
    assert book["ran"] == []  # the new digests were recorded

    # a file inside a product folder of one variant: only what reads that variant
    (root / "checkpoints" / "b" / "weights.bin").write_text("retrained elsewhere")
    out = _resume(book, capsys)
    assert book["ran"] == ["03_eval"]
    assert "03_eval: upstream product checkpoints/b of 02_train[b] changed since it ran, running again" in out

    # a product gone
    (root / "data" / "split.jsonl").unlink()
    out = _resume(book, capsys)
    assert book["ran"] == ["02_train[a]", "02_train[b]", "03_eval"]
    assert "02_train[b]: upstream product data/*.jsonl of 01_data is missing, running again" in out

    # an upstream chapter whose source changed runs again, and every chapter run after it that reads it
    src = book["nbdir"] / "01_data.py"
    src.write_text(src.read_text() + "\n# %%\nprint('edited')\n")
    out = _resume(book, capsys)
    assert book["ran"] == ["01_data", "02_train[a]", "02_train[b]", "03_eval"]
    assert "01_data: source changed since it ran, running again" in out
    assert "02_train[b]: upstream 01_data runs again before it, running again" in out
    assert "04_other: skipped: ok, unchanged" in out


def test_resume_reruns_a_record_without_upstream_hashes_and_params_still_come_first(plan_book, capsys):
    book = plan_book
    run_book("params/smoke.yaml", overrides=book["overrides"])
    run_json = book["root"] / "run.json"
    state = json.loads(run_json.read_text())
    for k in plan.UPSTREAM_KEYS:  # a record written before upstream products were hashed
        del state["chapters"]["03_eval"][k]
    state["chapters"]["02_train[a]"]["chapter_params_hash"] = "0" * 16
    run_json.write_text(json.dumps(state))
    out = _resume(book, capsys)
    assert book["ran"] == ["02_train[a]", "03_eval"]
    assert "01_data: skipped: ok, unchanged" in out  # reads nothing: no upstream hash to miss
    assert "02_train[a]: params changed since it ran, running again" in out
    assert "03_eval: upstream 02_train[a] runs again before it, running again" in out
    state = json.loads(run_json.read_text())
    del state["chapters"]["03_eval"]["upstream_hash"]
    run_json.write_text(json.dumps(state))
    out = _resume(book, capsys)
    assert book["ran"] == ["03_eval"]
    assert "03_eval: recorded without upstream product hashes (an older run record), running again" in out


def test_the_real_books_plan_on_an_empty_folder_runs_everything(tmp_path):
    cfg = Config()
    runs = chapter_runs(cfg)
    decided = plan.resume_plan(runs, runs, {}, cfg, tmp_path)
    assert [why for _, why in decided] == ["not run in this folder yet, running"] * len(runs)
    rec = plan.upstream_record(next(r for r in runs if r.label == "07_causal_verification"), runs, tmp_path)
    assert rec["upstream_products"]["05_train[causal]"]["checkpoints/causal"] == plan.MISSING
