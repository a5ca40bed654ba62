"""Checks of a built data set (chapter 02): contamination between splits by shingles, near-overlap of the world's
held-out and training phrases (shared content 3-grams, content-word Jaccard), pair consistency of
(clean, injected) twins, length tables, that the loader rejects a corrupt file, and `validate_dataset`,
which runs them all and gives the verdict."""
from __future__ import annotations

import itertools
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from causal_lib.core import criteria
from causal_lib.core.hashing import file_sha256
from causal_lib.data import attacks, injections, world
from causal_lib.data.records import FILES, REALISTIC, SPLITS, DataError, Record, data_folder, load_split
from causal_lib.data import scoring
def _wordseq(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _shingles(fragment: str, n: int) -> list[str]:
    w = re.findall(r"[a-z0-9]+", fragment.lower())
    if len(w) >= n:
        return [" " + " ".join(w[i:i + n]) + " " for i in range(len(w) - n + 1)]
    return [" " + " ".join(w) + " "] if len(w) >= 3 else []  # short fragments are matched whole


TRAINING_FILES = ("base_corpus", "train", "val")  # every text a model or a choice is trained on


def _training_text(r: Record) -> str:
    # one line per field: an n-gram never spans the end of S and the start of U
    return "\n".join(_wordseq(x) for x in (r.system, r.data, r.target) if x)


def held_out_content(splits: dict[str, list[Record]], held_out_families) -> dict[str, list[tuple[str, str]]]:
    """The test-only content by axis, as (name, text) pairs: phrasing (held-out request phrasings, the
    test look-alike notes), task (the held-out task's requests), family (wrapper text of every held-out-family
    template and of the test-only templates), payload (every generated string of the test split: novel
    payloads, SEP witness words, test documents' order codes) and document (every test document)."""
    held = set(held_out_families)
    phrases = injections.held_out_phrases()
    test = [r for r in splits.get("test", []) if r.source == "builtin"]
    strings = {r.injected_target for r in test if r.kind == "injected" and r.novel and "payload" in r.novel.split(",")}
    strings |= {r.injected_target for r in test if r.kind in ("probe_system", "probe_data")}
    for r in test:
        if r.kind in ("clean", "lookalike", "probe_data") and r.task in world.TASKS and world.TASKS[r.task].doc_kind == "list":
            strings.add(world.parse_document(r.clean_data).fields["code"])
    return {
        "phrasing": [(f"phrasing/{k}", t) for k, t in enumerate(phrases["phrasing"])]
        + [(f"note_test/{k}", t) for k, t in enumerate(phrases["lookalike"])]
        + [(f"probe_test/{k}", t) for k, t in enumerate(phrases["probe"])],
        "task": [(f"task/{k}", t) for k, t in enumerate(phrases["task"])],
        "family": [(t.id, t.template) for t in attacks.BUILTIN_TEMPLATES if t.family in held or "train" not in t.splits],
        "payload": [(f"string/{k}", t) for k, t in enumerate(sorted(strings))],
        "document": sorted({(r.pair_id, r.clean_data) for r in test if r.kind in ("clean", "lookalike", "probe_data")}),
    }


def contamination_check(splits: dict[str, list[Record]], held_out_families, n: int = 4) -> dict:
    """No test-only content in any training text (base corpus, defense training set, validation: S, U and
    the target of every record), on every held-out axis (DESIGN.md s.4).

    Phrasings, task requests and wrapper templates are matched as word n-grams of the text around their
    slots (fragments shorter than n words, but >= 3, are matched whole); a phrase that yields no n-gram could
    not be caught and is listed under `uncheckable` (the check then fails). A held-out wrapper without words
    (obfuscation's transforms, bare quote marks) is listed apart: only its family name is checked, by the
    record counts below. Generated strings (payloads, witness words, order codes) are matched whole, as words;
    documents exactly. Hits name the axis, the
    held-out string, the n-gram and the file. Also counts training records of a held-out family, of a test-only
    template, or marked with held-out content.
    """
    held = set(held_out_families)
    content = held_out_content(splits, held)
    training = {k: splits[k] for k in TRAINING_FILES if k in splits}
    corpus = {k: "\n".join(_training_text(r) for r in v) for k, v in training.items()}
    # The payload axis protects the world's generated strings; a realistic item (data/realistic.py: English text
    # written outside the world) can hold one as an ordinary word (a pseudo-word such as "TIME" is also English), which
    # is not the world's test content leaking: realistic text is matched on every other axis, not this one, and the
    # realistic benchmarks have their own 8-gram check (realistic.contamination)
    world_corpus = {k: "\n".join(_training_text(r) for r in v if r.task != REALISTIC) for k, v in training.items()}
    hits, uncheckable, wordless, n_checked, n_sh = [], [], [], {}, {}
    for axis in ("phrasing", "task", "family", "payload"):
        n_checked[axis] = 0
        for sid, text in content[axis]:
            if axis == "payload":
                shingles = [_wordseq(text)]
            else:
                shingles = [sh for frag in re.split(r"\{\w+\}", text) for sh in _shingles(frag, n)]
                if not shingles and axis != "family":
                    uncheckable.append({"axis": axis, "id": sid, "text": text})
                elif not shingles:  # no wrapper words (obfuscation's transforms, bare quote marks)
                    wordless.append(sid)
            n_checked[axis] += len(shingles)
            n_sh[(axis, sid)] = len(set(shingles))
            for sh in shingles:
                for k, c in (world_corpus if axis == "payload" else corpus).items():
                    cnt = c.count(sh)
                    if cnt:
                        hits.append({"axis": axis, "id": sid, "text": text, "ngram": sh.strip(), "file": k, "count": cnt})
    docs = {k: {r.clean_data for r in v} for k, v in training.items()}
    n_checked["document"] = len(content["document"])
    for sid, d in content["document"]:
        for k, dv in docs.items():
            if d in dv:
                hits.append({"axis": "document", "id": sid, "text": d, "ngram": d, "file": k, "count": 1})
    # the held-out strings most fully present first: a planted phrase before the others that merely share an
    # n-gram with it ("skip all that and"), so the first hits (and the summary) name the offending string
    found: dict = {}
    for h in hits:
        found.setdefault((h["axis"], h["id"]), set()).add(h["ngram"])
    hits.sort(key=lambda h: -len(found[(h["axis"], h["id"])]) / n_sh.get((h["axis"], h["id"]), 1))
    eval_only = {t.id for t in attacks.BUILTIN_TEMPLATES if "train" not in t.splits}
    recs = [r for v in training.values() for r in v]
    held_recs = sum(r.family in held for r in recs)
    eval_recs = sum(r.template_id in eval_only for r in recs)
    novel_recs = sum(bool(r.novel) for r in recs)
    by_axis = {a: sum(h["axis"] == a for h in hits) for a in content}
    return {"ngram": n, "n_checked": n_checked, "n_shingles": sum(n_checked.values()), "hits": hits[:20],
            "n_hits": len(hits), "hits_by_axis": by_axis, "uncheckable": uncheckable,
            "family_templates_without_words": wordless,
            "held_out_family_records_in_training": held_recs, "eval_only_template_records_in_training": eval_recs,
            "novel_records_in_training": novel_recs,
            "clean": not hits and not uncheckable and held_recs == 0 and eval_recs == 0 and novel_recs == 0}


def contamination_summary(rep: dict) -> str:
    """One line for the report: clean, or the offending strings named."""
    if rep["clean"]:
        return f"no overlap: {rep['n_shingles']} n-grams/strings checked on {len(rep['n_checked'])} axes"
    first, seen = [], set()  # one hit per held-out string
    for h in rep["hits"]:
        if (h["axis"], h["id"]) not in seen:
            seen.add((h["axis"], h["id"]))
            first.append(h)
    parts = [f"{h['axis']}: {h['text'][:50]!r} in {h['file']} ({h['ngram'][:40]!r})" for h in first[:5]]
    parts += [f"uncheckable {u['axis']} phrase {u['text']!r}" for u in rep["uncheckable"][:3]]
    for key in ("held_out_family_records_in_training", "eval_only_template_records_in_training",
                "novel_records_in_training"):
        if rep[key]:
            parts.append(f"{rep[key]} {key.replace('_', ' ')}")
    return f"{rep['n_hits']} overlaps: " + "; ".join(parts)


# -- content overlap between the world's held-out and training content (3-grams, content words) ---------------

# Function words: a shared 3-gram of function words only ("of the list" has one content word) says nothing about
# a phrasing; content-word Jaccard is computed without them.
FUNCTION_WORDS = frozenset(
    "a an the and or but if then than so of to in on at by for with from into onto as is are was were be been being "
    "am it its this that these those there here i me my mine you your yours we us our they them their he him his she "
    "her what which who whom whose how where when why all any each every some no not only just also very too please "
    "now do does did done can could will would should may might must shall has have had s t".split())

JACCARD_FLAG = 0.5  # content-word Jaccard at or above this is flagged (issue 30)
MIN_CONTENT_WORDS_3GRAM = 2  # a shared 3-gram is flagged when at least this many of its words are content words


def _slot_free_fragments(text: str) -> list[list[str]]:
    return [re.findall(r"[a-z0-9]+", frag.lower()) for frag in re.split(r"\{\w+\}", text)]


def content_words(text: str) -> set[str]:
    """The words of `text` outside slots ({payload}) that are not function words (one letter words dropped)."""
    return {w for frag in _slot_free_fragments(text) for w in frag if w not in FUNCTION_WORDS and len(w) > 1}


def trigrams(text: str) -> set[str]:
    """Word 3-grams of `text`, never across a slot ({payload}, {instruction}) or a line."""
    return {" ".join(w[i:i + 3]) for line in text.splitlines() for w in _slot_free_fragments(line)
            for i in range(len(w) - 2)}


def world_held_out_content(held_out_families=None) -> list[tuple[str, str, str]]:
    """The world's test-only phrases as (axis, id, text): request phrasings of every goal and task, the held-out
    task's requests, the test look-alike notes and the wrapper text of held-out-family and test-only templates."""
    held = set(attacks.DEFAULT_HELD_OUT if held_out_families is None else held_out_families)
    out = [("phrasing", f"{goal}/test/{k}", t) for goal, pool in
           (("output_hijack", injections.OUTPUT_REQUESTS), ("prompt_leak", injections.LEAK_REQUESTS),
            ("refusal", injections.REFUSAL_REQUESTS))
           for k, t in enumerate(pool["test"])]
    out += [("task" if name in injections.HELD_OUT_TASKS else "phrasing", f"{name}/test/{k}", t)
            for name, spec in world.TASKS.items() for k, t in enumerate(spec.test_requests)]
    out += [("phrasing", f"note_test/{k}", t) for k, t in enumerate(injections.NOTES_TEST)]
    out += [("phrasing", f"probe_test/{k}", t) for k, t in enumerate(injections.held_out_phrases()["probe"])]
    out += [("family", t.id, t.template) for t in attacks.BUILTIN_TEMPLATES if t.family in held or "train" not in t.splits]
    return out


def world_training_content(held_out_families=None) -> list[tuple[str, str]]:
    """The world's training-side text that can stand in the data (U) of a training item, as (id, text): the
    training request phrasings of every goal and task, the base corpus's notes and extra S instructions, the
    training families' wrapper templates and the documents' sentences. A task's own S instructions are left out:
    a request for a task has to name it ("the order code"), and S instructions are never an injection in training."""
    held = set(attacks.DEFAULT_HELD_OUT if held_out_families is None else held_out_families)
    out = [(f"{goal}/train/{k}", t) for goal, pool in
           (("output_hijack", injections.OUTPUT_REQUESTS), ("prompt_leak", injections.LEAK_REQUESTS),
            ("refusal", injections.REFUSAL_REQUESTS))
           for k, t in enumerate(pool["train"])]
    out += [(f"{name}/request/{k}", t) for name, spec in world.TASKS.items() for k, t in enumerate(spec.requests)]
    out += [(f"note_base/{k}", t) for k, t in enumerate(injections.NOTES_BASE)]
    out += [(f"system_extra/{k}", t) for k, t in enumerate(injections.SYSTEM_EXTRAS)]
    out += [(t.id, t.template) for t in attacks.BUILTIN_TEMPLATES if t.family not in held and "train" in t.splits]
    docs = ("_RECORD_HEADERS", "_LIST_HEADERS", "_LIST_FOOTERS", "_RECORD_EXTRAS", "_REVIEW_EXTRAS", "_POS_SENTENCES",
            "_NEG_SENTENCES")
    out += [(f"document/{name.strip('_').lower()}/{k}", t) for name in docs for k, t in enumerate(getattr(world, name, ()))]
    out += [("refusal_answer", injections.REFUSAL)]
    return out


def content_overlap_check(held_out_families=None, held: list | None = None, training: list | None = None,
                          jaccard: float = JACCARD_FLAG, min_content: int = MIN_CONTENT_WORDS_3GRAM) -> dict:
    """Held-out phrases that are close to training content without sharing a 4-gram (issue 30): every pair
    (held-out phrase, training text) sharing a word 3-gram with at least `min_content` content words ("the closing
    entry"), or with a content-word Jaccard >= `jaccard`, is flagged. 3-grams of function words only are counted
    apart (`function_word_3grams`), not flagged. `held` ((axis, id, text)) and `training` ((id, text)) default to
    the world's (world_held_out_content, world_training_content)."""
    held = world_held_out_content(held_out_families) if held is None else held
    training = world_training_content(held_out_families) if training is None else training
    tri_t = [(tid, t, trigrams(t), content_words(t)) for tid, t in training]
    flags, weak = [], []
    for axis, hid, h in held:
        th, ch = trigrams(h), content_words(h)
        for tid, t, tt, ct in tri_t:
            shared = th & tt
            strong = sorted(g for g in shared if sum(w not in FUNCTION_WORDS for w in g.split()) >= min_content)
            j = len(ch & ct) / len(ch | ct) if ch | ct else 0.0
            if strong or j >= jaccard:
                flags.append({"axis": axis, "id": hid, "text": h, "training_id": tid, "training_text": t,
                              "shared_3grams": strong, "jaccard": round(j, 3),
                              "why": ", ".join(([f"3-gram {g!r}" for g in strong])
                                               + ([f"content-word Jaccard {j:.2f}"] if j >= jaccard else []))})
            elif shared:
                weak.append({"id": hid, "training_id": tid, "shared_3grams": sorted(shared)})
    return {"n_held_out": len(held), "n_training": len(training), "jaccard_threshold": jaccard,
            "min_content_words_3gram": min_content, "flags": flags, "n_flags": len(flags),
            "flagged_phrases": sorted({f["id"] for f in flags}), "function_word_3grams": weak, "clean": not flags}


def content_overlap_summary(rep: dict) -> str:
    """One line: clean, or each flagged held-out phrase with its closest training text and why."""
    if rep["clean"]:
        return (f"no shared content 3-gram and no content-word Jaccard >= {rep['jaccard_threshold']}: "
                f"{rep['n_held_out']} held-out phrases x {rep['n_training']} training texts")
    parts = [f"{f['text']!r} ~ {f['training_text']!r} ({f['why']})" for f in rep["flags"]]
    return f"{len(rep['flagged_phrases'])} held-out phrases close to training content: " + "; ".join(parts)


def _norm_ws(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def pair_violations(records: list[Record]) -> list[str]:
    """Counterfactual-pair invariants: every injected item has a clean twin with the same S, D and O*, its U
    is D with Z inserted (removing Z gives D back), and O_inj differs from O*."""
    clean = {r.pair_id: r for r in records if r.kind == "clean"}
    bad = []
    for r in records:
        if r.kind == "clean" and r.data != r.clean_data:
            bad.append(f"{r.id}: clean item whose data differs from clean_data")
        if r.kind not in ("injected", "lookalike", "probe_data"):
            continue
        if r.injection not in r.data:
            bad.append(f"{r.id}: injection text not in the data")
        elif _norm_ws(r.data.replace(r.injection, " ")) != _norm_ws(r.clean_data):
            bad.append(f"{r.id}: data minus the injection is not the clean document")
        if r.kind != "injected":
            continue
        c = clean.get(r.pair_id)
        if c is None:
            bad.append(f"{r.id}: no clean twin with pair_id {r.pair_id}")
            continue
        for f in ("system", "clean_data", "target", "task"):
            if getattr(c, f) != getattr(r, f):
                bad.append(f"{r.id}: {f} differs from its clean twin")
        if scoring.normalize(r.injected_target) == scoring.normalize(r.target):
            bad.append(f"{r.id}: O_inj equals O*")
    probes = Counter(r.pair_id for r in records if r.kind in ("probe_system", "probe_data"))
    bad += [f"{p}: probe pair incomplete" for p, k in probes.items() if k != 2]
    return bad


def length_table(records: list[Record]) -> list[dict]:
    """One row per record: kind, family, goal, position and word counts of S, U, D, Z and the target."""
    wc = lambda s: len((s or "").split())  # noqa: E731
    return [{"id": r.id, "kind": r.kind, "family": r.family, "goal": r.goal, "position": r.position, "task": r.task,
             "held_out": r.held_out, "system_words": wc(r.system), "data_words": wc(r.data),
             "clean_words": wc(r.clean_data), "injection_words": wc(r.injection), "target_words": wc(r.target),
             "total_words": wc(r.system) + wc(r.data) + wc(r.target)} for r in records]


def _loader_rejects_corrupt(data_dir: Path) -> dict:
    """The loader's own test: a copy of test.jsonl with line 2 missing a field must fail naming line 2."""
    lines = (data_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    obj = json.loads(lines[1])
    obj.pop("target")
    lines[1] = json.dumps(obj)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test.jsonl").write_text("\n".join(lines) + "\n")
        try:
            load_split(tmp, "test")
        except DataError as e:
            return {"ok": "test.jsonl:2" in str(e) and "target" in str(e), "message": str(e).replace(tmp, "<tmp>")}
        return {"ok": False, "message": "a record without 'target' was accepted"}


def _count(recs, key) -> dict:
    return dict(sorted(Counter(key(r) for r in recs).items(), key=lambda kv: str(kv[0])))


def validate_dataset(data_dir, held_out_families=None) -> dict:
    """Chapter 02's three checks on a built data folder: loading, counterfactual pairs, attack diversity
    (with the contamination check); plus `checks` (hard ones decide NOT READY) and a verdict."""
    d = data_folder(data_dir)
    manifest = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").is_file() else {}
    held = set(held_out_families if held_out_families is not None else manifest.get("held_out_families", attacks.DEFAULT_HELD_OUT))
    rep: dict = {"data_dir": str(d), "files": {}}
    splits, t0 = {}, time.perf_counter()
    for name in FILES:
        try:
            splits[name] = load_split(d, name)
            sha_ok = manifest.get("files", {}).get(name, {}).get("sha256") == file_sha256(d / f"{name}.jsonl")
            rep["files"][name] = {"ok": True, "records": len(splits[name]), "sha256_matches_manifest": sha_ok,
                                  "kinds": _count(splits[name], lambda r: r.kind)}
        except DataError as e:
            rep["files"][name] = {"ok": False, "error": str(e)}
    rep["load_seconds"] = time.perf_counter() - t0
    loaded = all(v["ok"] for v in rep["files"].values())
    rep["loader_rejects_corrupt"] = _loader_rejects_corrupt(d) if "test" in splits and splits["test"] else {"ok": False}
    allrec = [r for v in splits.values() for r in v]

    # counterfactual pairs
    viol = [v for name in SPLITS if name in splits for v in pair_violations(splits[name])]
    rep["pairs"] = {name: sum(r.kind == "injected" for r in splits.get(name, [])) for name in SPLITS}
    rep["pair_violations"] = {"count": len(viol), "examples": viol[:10]}
    inj = [r for r in allrec if r.kind == "injected"]
    rep["lengths"] = {k: _describe([len(getattr(r, a).split()) for r in v]) for k, v, a in
                      (("clean_words", [r for r in allrec if r.kind == "clean"], "data"), ("injected_words", inj, "data"),
                       ("injection_words", inj, "injection"), ("system_words", allrec, "system"),
                       ("target_words", [r for r in allrec if r.kind in ("clean", "lookalike", "probe_data")], "target"))}

    # split hygiene
    docs = {name: {r.clean_data for r in v} for name, v in splits.items()}
    rep["document_overlap"] = {f"{a}&{b}": len(docs[a] & docs[b]) for a, b in itertools.combinations(docs, 2)}
    rep["contamination"] = contamination_check(splits, held)
    rep["held_out_in_train"] = rep["contamination"]["held_out_family_records_in_training"]
    # near-copies the 4-gram check passes (shared content 3-grams, content-word Jaccard): reported, a soft check
    rep["content_overlap"] = content_overlap_check(held)

    # attack diversity (test split; train for comparison)
    test_inj = [r for r in splits.get("test", []) if r.kind == "injected"]
    train_inj = [r for r in splits.get("train", []) if r.kind == "injected"]
    builtin = [r for r in test_inj if r.source == "builtin"]
    rep["diversity"] = {
        "test": {"by_family": _count(test_inj, lambda r: r.family), "by_goal": _count(test_inj, lambda r: r.goal),
                 "by_position": _count(test_inj, lambda r: r.position), "by_source": _count(test_inj, lambda r: r.source),
                 "by_goal_position": _count(test_inj, lambda r: f"{r.goal}/{r.position}"),
                 "templates_per_family": {f: len({r.template_id for r in test_inj if r.family == f})
                                          for f in sorted({r.family for r in test_inj})},
                 # of the built-in attacks: an attack file's items are held out by construction
                 "held_out_share": sum(r.held_out for r in builtin) / max(len(builtin), 1),
                 "by_task": _count([r for r in splits.get("test", []) if r.kind == "clean"], lambda r: r.task)},
        "train": {"by_family": _count(train_inj, lambda r: r.family), "by_goal": _count(train_inj, lambda r: r.goal),
                  "by_position": _count(train_inj, lambda r: r.position)},
        "distinct_templates": len({r.template_id for r in inj}),
        "families": sorted({r.family for r in inj}),
    }
    clean_targets = Counter(r.target.lower() for r in allrec if r.kind == "clean")
    top_share = max(clean_targets.values()) / sum(clean_targets.values()) if clean_targets else 1.0
    rep["kinds_test"] = _count(splits.get("test", []), lambda r: r.kind)

    div = rep["diversity"]["test"]
    fam_min = min(div["by_family"].values()) if div["by_family"] else 0
    cells = len(injections.GOALS) * len(injections.POSITIONS)
    checks = [
        ("every file loads and validates", loaded, True, ", ".join(f"{k}: {v.get('records', 'ERROR')}" for k, v in rep["files"].items())),
        ("files match the manifest's sha256", loaded and all(v["sha256_matches_manifest"] for v in rep["files"].values()), True,
         "manifest present" if manifest else "no manifest"),
        ("loader names file and line of a corrupt record", rep["loader_rejects_corrupt"]["ok"], True,
         rep["loader_rejects_corrupt"].get("message", "")[:120]),
        ("counterfactual pairs differ only in Z (same S, D, O*)", loaded and not viol, True, f"{len(viol)} violations"),
        ("no document in two files", not any(rep["document_overlap"].values()), True,
         f"{sum(rep['document_overlap'].values())} shared documents"),
        ("no held-out family in training files", rep["held_out_in_train"] == 0, True, f"{rep['held_out_in_train']} records"),
        ("no test-only content in training files (phrasing, task, payload, family, document)",
         rep["contamination"]["clean"], True, contamination_summary(rep["contamination"])),
        (f"no held-out phrase close to training content (shared content 3-gram, content-word Jaccard >= {JACCARD_FLAG})",
         rep["content_overlap"]["clean"], False, content_overlap_summary(rep["content_overlap"])[:300]),
        (f">= 8 attack families in test", len(div["by_family"]) >= 8, False, f"{len(div['by_family'])} families"),
        ("every goal x position cell in test", len(div["by_goal_position"]) == cells, False,
         f"{len(div['by_goal_position'])}/{cells} cells"),
        (">= 10 test items per family", fam_min >= 10, False, f"min {fam_min}"),
        ("held-out share of test attacks 20-50%", 0.2 <= div["held_out_share"] <= 0.5, False, f"{div['held_out_share']:.0%}"),
        (">= 100 attacked test items", len(test_inj) >= 100, False, f"{len(test_inj)}"),
        (">= 30 look-alikes and >= 30 probe pairs", rep["kinds_test"].get("lookalike", 0) >= 30
         and rep["kinds_test"].get("probe_system", 0) >= 30, False,
         f"{rep['kinds_test'].get('lookalike', 0)} look-alikes, {rep['kinds_test'].get('probe_system', 0)} probe pairs"),
        ("no clean answer above 15% of items", top_share <= 0.15, False, f"top answer share {top_share:.1%}"),
    ]
    rep["checks"] = [{"check": c, "ok": bool(ok), "hard": hard, "value": v} for c, ok, hard, v in checks]
    judged = criteria.gate("dataset", rep["checks"])  # NOT READY if a hard check fails, ACCEPTABLE if a soft one
    rep["verdict"], rep["reasons"] = judged.verdict, judged.reasons()
    return rep


def _describe(xs: list[int]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": len(s), "mean": sum(s) / len(s), "min": s[0], "p50": q(0.5), "p99": q(0.99), "max": s[-1]}
