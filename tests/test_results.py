"""Results of record (book/results.py): a run's small outputs saved under results/<preset>/<date>-<commit>/ with
provenance, without per-item data or absolute paths, and README's comparison table regenerated from them."""
import json

import pytest

from causal_lib.book import results
from causal_lib.config import PROJECT_ROOT


def _fake_run(root, complete=True):
    run = root / "outputs" / "default"
    (run / "metrics").mkdir(parents=True)
    (run / "reports").mkdir()
    (run / "seeds" / "seed_1" / "metrics").mkdir(parents=True)
    chapters = {"01_setup_check": {"status": "ok", "wall_s": 10.0, "peak_rss_gb": 0.4},
                "08_attack_evaluation": {"status": "ok" if complete else "failed", "wall_s": 100.0, "peak_rss_gb": 2.0}}
    (run / "run.json").write_text(json.dumps({"params_file": "params/default.yaml", "params_hash": "abc",
                                              "config": {"run": {"seed": 0, "seeds": [1]}}, "chapters": chapters}))
    (run / "metrics" / "comparison.json").write_text(json.dumps({"where": f"{PROJECT_ROOT}/outputs/default/x"}))
    (run / "metrics" / "eval_none_items.jsonl").write_text("{}\n")
    (run / "seeds" / "seed_1" / "metrics" / "base.json").write_text("{}")
    (run / "reports" / "WEEK4_COMPARISON_TABLE.md").write_text(
        "# Comparison\n\nsome text\n\n| defense | ASR |\n| --- | --- |\n| causal | 1.0% |\n\nafter\n")
    return run


def test_save_keeps_small_outputs_with_provenance_and_no_absolute_path(tmp_path):
    run = _fake_run(tmp_path)
    dest = results.save_run(run, tmp_path / "results", commit="0123456789abcdef")
    assert dest.name.endswith("-0123456") and dest.parent.name == "default"
    assert (dest / "metrics" / "comparison.json").is_file() and not (dest / "metrics" / "eval_none_items.jsonl").exists()
    assert str(PROJECT_ROOT) not in (dest / "metrics" / "comparison.json").read_text()
    assert (dest / "seeds" / "seed_1" / "metrics" / "base.json").is_file()
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["commit"] == "0123456789abcdef" and prov["params_hash"] == "abc" and prov["seeds"] == [1]
    assert prov["complete"] and prov["book_wall_s"] == 110.0 and prov["machine"]["cores"]
    table = results.comparison_markdown(results.newest("default", tmp_path / "results"))
    assert "| causal | 1.0% |" in table and "commit 0123456" in table and "after" not in table


def test_incomplete_runs_say_so_and_missing_ones_are_one_line(tmp_path, capsys):
    dest = results.save_run(_fake_run(tmp_path, complete=False), tmp_path / "results", commit="f" * 40)
    assert not json.loads((dest / "provenance.json").read_text())["complete"]
    assert "incomplete" in results.comparison_markdown(dest)
    assert results.main(["save", "--run", "nope", "--output-root", str(tmp_path)]) == 2
    assert results.main(["save", "--run", "../x"]) == 2
    assert results.main(["table", "--preset", "none", "--results-root", str(tmp_path / "results")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 3 and all(ln.startswith("error: ") for ln in err)


def test_seed_tables_render_each_seed_and_the_across_seed_tests(tmp_path):
    from causal_lib.book.results import ResultsError, seed_tables

    def rate(k, n):
        return {"k": k, "n": n, "rate": k / n, "lo": max(k / n - 0.05, 0.0), "hi": min(k / n + 0.05, 1.0)}

    for s, k in ((0, 32), (1, 30)):
        real = {"protocol": {a: {"starts_with": rate(k // 2, 208)} for a in ("naive", "ignore", "completion")},
                "union": rate(k, 208), "utility": {"rouge_l": 0.14, "lo": 0.10, "hi": 0.18, "n": 60},
                "sep": rate(3, 60)}
        (tmp_path / f"seed_{s}").mkdir()
        (tmp_path / f"seed_{s}" / "summary.json").write_text(json.dumps(
            {"causal": {"realistic": real, "world": {"asr": rate(1, 300), "benign_accuracy": rate(297, 300)}}}))
    (tmp_path / "across_seeds.json").write_text(json.dumps({"tests": [{
        "measure": "protocol union", "a": "causal", "b": "causal_sft", "seeds": [0, 1], "n_items": 208,
        "difference": -0.12, "lo": -0.17, "hi": -0.07, "p_holm": 1e-4, "significant": True,
        "per_seed": [{"seed": 0, "a_only": 1, "b_only": 26}, {"seed": 1, "a_only": 2, "b_only": 25}]}]}))
    text = seed_tables(tmp_path)
    lines = text.splitlines()
    assert lines[2].startswith("| causal | 0 | 7.7% [2.7, 12.7]") and "| 15.4% [10.4, 20.4] |" in lines[2]
    assert lines[3].startswith("| causal | 1 |") and "14.4%" in lines[3]
    assert "| protocol union | causal - causal_sft | 2 | 208 | -12.0 pt [-17.0, -7.0] | 0.0001 | yes | 0: 1/26; 1: 2/25 |" in text
    with pytest.raises(ResultsError, match="no seed_<s>/summary.json"):
        seed_tables(tmp_path / "seed_0")
    # a seed whose realistic benchmarks are not evaluated yet shows its world columns and says so
    (tmp_path / "seed_2").mkdir()
    (tmp_path / "seed_2" / "summary.json").write_text(json.dumps(
        {"causal": {"realistic": None, "world": {"asr": rate(2, 300), "benign_accuracy": rate(296, 300)}}}))
    last = [ln for ln in seed_tables(tmp_path).splitlines() if ln.startswith("| causal | 2 |")][0]
    assert "not yet evaluated" in last and last.count("|") == 11 and "0.7% [0.0, 5.7]" in last


def _seed_folder(root, asr_items: dict, corpora_items: dict | None = None, realistic=False):
    """A seed's run folder as the book leaves it: per model its world items (id -> succeeded) and, optionally, its
    corpora items (id -> (source, succeeded)); every attacked item has a clean twin that fails the attack check."""
    m = root / "metrics"
    m.mkdir(parents=True)
    for d, outcomes in asr_items.items():
        items = [{"id": i, "kind": "injected", "success": ok, "twin_passed": False} for i, ok in outcomes.items()]
        rate = {"k": sum(outcomes.values()), "n": len(outcomes), "rate": 0.0, "lo": 0.0, "hi": 1.0}
        (m / f"eval_{d}.json").write_text(json.dumps({"summary": {"asr": rate}, "cache_key": "k"}))
        (m / f"eval_{d}_items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
        (m / f"train_{d}_log.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n"
                                                + json.dumps({"train_runtime": 12.0}))
        if corpora_items is not None:
            its = [{"id": i, "kind": "injected", "source": src, "success": ok, "twin_passed": i.endswith("tw"),
                    "error": "its canary needs 300 new tokens: not scored" if ok is None else None}
                   for i, (src, ok) in corpora_items[d].items()] + [{"id": "c0", "kind": "clean"}]
            (m / f"corpora_{d}.json").write_text(json.dumps({
                "attack_files": ["/abs/x/spikee.jsonl"], "seconds": 3.0, "items": its,
                "summary": {"asr_by_source": {"spikee.jsonl": rate}, "asr": rate, "twin_control": {"discounted": 1},
                            "truncated_by_source": {"spikee.jsonl": 0}}}))
    return root


def test_collect_and_across_seeds_with_corpora(tmp_path):
    """results collect / across (book.seed_records): a seed's small record without paths, corpora null until
    evaluated; the across-seed table holds world ASR and one row per corpus over the seeds that have it, the
    twin-passed corpus items dropped for both models, Holm over the table."""
    from causal_lib.book import seed_records

    ids = [f"t{i}" for i in range(40)]
    folders = {}
    for s in (0, 1, 2):
        a = {i: k < 2 for k, i in enumerate(ids)}  # causal: 2 successes
        b = {i: k < 12 for k, i in enumerate(ids)}  # causal_sft: 12
        corp = None
        if s != 2:  # seed 2's corpora are not evaluated yet
            corp = {d: {**{f"s{k}" + ("tw" if k == 0 else ""): ("spikee.jsonl", k < n) for k in range(30)},
                        "s30": ("spikee.jsonl", None),  # an error row (its judge could not decide): left out
                        **{f"g{k}": ("garak.jsonl", False) for k in range(10)}}  # no discordant item
                    for d, n in (("causal", 1), ("causal_sft", 20))}
        folders[s] = _seed_folder(tmp_path / f"seed_{s}", {"causal": a, "causal_sft": b}, corp)
    out = tmp_path / "results" / "seed_0"
    summary = seed_records.collect(folders[0], out)
    assert summary["causal"]["corpora"]["attack_files"] == ["spikee.jsonl"]  # no absolute path
    assert summary["causal"]["realistic"] is None
    assert json.loads((out / "training.json").read_text())["causal"]["train_runtime_s"] == 12.0
    assert seed_records.collect(folders[2], tmp_path / "r2")["causal"]["corpora"] is None
    res = seed_records.across(folders)
    rows = {r["measure"]: r for r in res["tests"]}
    assert set(rows) == {"world ASR", "corpus spikee.jsonl ASR", "corpus garak.jsonl ASR"}
    assert res["corpora_seeds"] == [0, 1]
    # a row without a discordant item cannot reject: shown, not tested, and not counted in Holm's family
    garak = rows["corpus garak.jsonl ASR"]
    assert garak["p_holm"] is None and not garak["tested"] and not garak["significant"]
    tested = [r for r in res["tests"] if r["tested"]]
    assert len(tested) == 2 and min(r["p_holm"] for r in tested) == pytest.approx(
        min(2 * min(r["p_value"] for r in tested), 1.0))
    assert rows["world ASR"]["seeds"] == [0, 1, 2] and rows["world ASR"]["n_items"] == 40
    corpus = rows["corpus spikee.jsonl ASR"]
    assert corpus["seeds"] == [0, 1] and corpus["n_items"] == 29  # the twin-passed and the error row dropped
    assert [p["b_only"] for p in corpus["per_seed"]] == [19, 19] and corpus["difference"] < 0
    assert all(r["p_holm"] >= r["p_value"] for r in tested)
    # the per-seed table shows the corpora where a seed has them
    for s in (0, 1, 2):
        seed_records.collect(folders[s], tmp_path / "saved" / f"seed_{s}")
    text = results.seed_tables(tmp_path / "saved")
    assert "| model | seed | spikee.jsonl ASR |" in text  # the sources of the summaries' asr_by_source
    assert "| causal | 2 |" not in text.split("spikee.jsonl ASR")[1]


def test_results_across_names_a_malformed_seed_folder(capsys):
    assert results.main(["across", "/tmp/x.json", "seed0-folder"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SEED:RUN_FOLDER" in err
