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
