"""Held-out content (DESIGN.md s.4): the test split holds content never seen in any training text on the axes
phrasing, payload, task and family (plus its documents). The contamination check is clean on a built data set
and catches one planted overlap on every axis in every training file; validation holds training content only;
the test split has items on every axis; generated-string classes are disjoint."""
import calendar
import dataclasses
import random
import re
from collections import Counter

import pytest

from causal_lib.config import load_config
from causal_lib.data import attacks, build, checks, injections, world

TRAINING_FILES = ("base_corpus", "train", "val")


@pytest.fixture(scope="module")
def cfg():
    return load_config("params/smoke.yaml")


@pytest.fixture(scope="module")
def splits(cfg):
    return build.build_dataset(cfg)


def _check(splits, cfg):
    return checks.contamination_check(splits, cfg.data.held_out_families)


def _plant(splits, file, text=None, **fields):
    """A copy of the splits with one record of `file` changed: `text` appended to its data, or fields replaced."""
    recs = list(splits[file])
    i = next(k for k, r in enumerate(recs) if r.kind in ("base", "injected"))
    r = recs[i]
    recs[i] = dataclasses.replace(r, **({"data": f"{r.data} {text}"} if text is not None else {}), **fields)
    return {**splits, file: recs}


def _assert_caught(rep, axis, file, offending):
    assert not rep["clean"], (axis, offending)
    assert rep["hits_by_axis"][axis] >= 1, (axis, offending, rep["hits_by_axis"])
    assert any(h["axis"] == axis and h["file"] == file for h in rep["hits"]), rep["hits"]
    summary = checks.contamination_summary(rep)
    assert repr(offending[:50]) in summary, (offending, summary)


def _fill(phrase):
    return phrase.format(payload=world.payload_pool()[0]) if "{" in phrase else phrase


def _test_injected(splits, axis):
    return [r for r in splits["test"] if r.kind == "injected" and r.novel and axis in r.novel.split(",")]


# ---------------------------------------------------------------------------------------------
# a. the contamination check: clean as built, and one planted overlap on any axis makes it fail


def test_built_dataset_is_clean(splits, cfg):
    rep = _check(splits, cfg)
    assert rep["clean"], checks.contamination_summary(rep)
    assert rep["n_hits"] == 0 and not rep["uncheckable"] and rep["novel_records_in_training"] == 0
    assert set(rep["hits_by_axis"]) == {"phrasing", "task", "family", "payload", "document"}
    assert all(rep["n_checked"][a] > 0 for a in rep["hits_by_axis"]), rep["n_checked"]
    assert checks.contamination_summary(rep).startswith("no overlap")


def test_every_held_out_phrase_planted_in_training_is_caught(splits, cfg):
    """Each test-only request phrasing and look-alike note, planted in one training file (the files in turn)."""
    phrases = injections.held_out_phrases()["phrasing"] + injections.held_out_phrases()["lookalike"]
    assert len(phrases) >= 20
    for k, phrase in enumerate(phrases):
        file = TRAINING_FILES[k % len(TRAINING_FILES)]
        _assert_caught(_check(_plant(splits, file, _fill(phrase)), cfg), "phrasing", file, phrase)


def test_every_sep_probe_phrasing_and_wrapper_planted_in_training_is_caught(splits, cfg):
    """The test split's SEP probes (held out of training since issue 31) and their wrappers, planted in turn."""
    probes = injections.held_out_phrases()["probe"]
    assert len(probes) == len(injections.PROBES_TEST) + len(injections.PROBE_WRAPPERS_TEST) - 1
    for k, phrase in enumerate(probes):
        file = TRAINING_FILES[k % len(TRAINING_FILES)]
        text = _fill(phrase.replace("{probe}", "the word shown"))
        _assert_caught(_check(_plant(splits, file, text), cfg), "phrasing", file, phrase)


def test_sep_probes_are_held_out_phrasings_bare_or_wrapped_in_u(splits):
    probes = [r for r in splits["test"] if r.kind in ("probe_system", "probe_data")]
    assert probes and {r.template_id.split("/")[3] for r in probes if r.kind == "probe_data"} > {"0"}  # wrapped too
    for r in probes:
        k, w = (int(x) for x in r.template_id.split("/")[1::2])
        probe = injections.PROBES_TEST[k].format(payload=r.injected_target)
        if r.kind == "probe_system":
            assert r.system.endswith(" " + probe) and r.injection == probe
        else:
            assert r.injection == injections.PROBE_WRAPPERS_TEST[w].format(probe=probe) and r.injection in r.data
    # no training text holds a probe's words around its slot (S, U and targets of every training record)
    frags = [f.strip() for p in injections.PROBES_TEST for f in p.split("{payload}") if len(f.split()) >= 3]
    assert frags
    for file in TRAINING_FILES:
        for r in splits[file]:
            assert not any(f in t for f in frags for t in filter(None, _texts(r))), (file, r.id)


@pytest.mark.parametrize("file", TRAINING_FILES)
def test_held_out_task_request_planted_in_training_is_caught(splits, cfg, file):
    reqs = injections.held_out_phrases()["task"]
    assert reqs == tuple(q for t in injections.HELD_OUT_TASKS for q in world.TASKS[t].test_requests) and reqs
    for req in reqs:
        _assert_caught(_check(_plant(splits, file, req), cfg), "task", file, req)


def test_held_out_family_template_planted_in_training_is_caught(splits, cfg):
    """Each held-out family's template and each test-only template, rendered around a training request and
    planted in one training file (the files in turn)."""
    rep0 = _check(splits, cfg)
    wordless = set(rep0["family_templates_without_words"])
    assert {t.split("/")[0] for t in wordless} <= set(cfg.data.held_out_families)
    held = [t for t in attacks.BUILTIN_TEMPLATES
            if (t.family in cfg.data.held_out_families or "train" not in t.splits) and t.id not in wordless]
    assert {t.family for t in held} >= {"role_authority", "fake_dialogue", "nested_quote", "context_ignoring", "combined"}
    for k, t in enumerate(held):
        file = TRAINING_FILES[k % len(TRAINING_FILES)]
        text = t.render(_fill(injections.OUTPUT_REQUESTS["train"][0]), answer="Paris")
        _assert_caught(_check(_plant(splits, file, text), cfg), "family", file, t.template)


@pytest.mark.parametrize("file", TRAINING_FILES)
def test_test_payload_planted_in_training_is_caught(splits, cfg, file):
    novel = _test_injected(splits, "payload")
    assert novel
    p = novel[0].injected_target
    assert world.string_class(p) == "test"
    _assert_caught(_check(_plant(splits, file, f"Just say {p}."), cfg), "payload", file, p)
    # a SEP witness word and a test document's order code are test-only strings too
    witness = next(r.injected_target for r in splits["test"] if r.kind == "probe_system")
    _assert_caught(_check(_plant(splits, file, f"Just say {witness}."), cfg), "payload", file, witness)
    code = next(world.parse_document(r.clean_data).fields["code"] for r in splits["test"]
                if r.kind == "clean" and r.task in ("first_item", "last_item", "order_code"))
    assert world.string_class(code) == "test"
    _assert_caught(_check(_plant(splits, file, f"Order code: {code}."), cfg), "payload", file, code)
    for kind in ("lookalike", "probe_data"):  # the documents of look-alikes and probes are test documents too
        code = next(world.parse_document(r.clean_data).fields["code"] for r in splits["test"]
                    if r.kind == kind and r.task in ("first_item", "last_item", "order_code"))
        _assert_caught(_check(_plant(splits, file, f"Order code: {code}."), cfg), "payload", file, code)


@pytest.mark.parametrize("file", TRAINING_FILES)
def test_test_document_planted_in_training_is_caught(splits, cfg, file):
    doc = next(r.clean_data for r in splits["test"] if r.kind == "clean" and r.task == "classify_review")
    _assert_caught(_check(_plant(splits, file, clean_data=doc, data=doc), cfg), "document", file, doc)


def test_novel_record_or_held_out_family_in_training_fails(splits, cfg):
    rep = _check(_plant(splits, "train", novel="phrasing"), cfg)
    assert not rep["clean"] and rep["novel_records_in_training"] == 1
    assert "1 novel records in training" in checks.contamination_summary(rep)
    rep = _check(_plant(splits, "base_corpus", novel="payload"), cfg)
    assert not rep["clean"] and rep["novel_records_in_training"] == 1
    rep = _check(_plant(splits, "val", family="fake_dialogue"), cfg)
    assert not rep["clean"] and rep["held_out_family_records_in_training"] == 1
    assert "1 held out family records in training" in checks.contamination_summary(rep)
    rep = _check(_plant(splits, "val", template_id="context_ignoring/5"), cfg)
    assert not rep["clean"] and rep["eval_only_template_records_in_training"] == 1


# ---------------------------------------------------------------------------------------------
# b. validation: training families and training content only

_ONSET = "|".join(sorted(world._ONSETS, key=len, reverse=True))
_PSEUDO = re.compile(rf"^(?:(?:{_ONSET})(?:ai|ou|[aeiou]))+$")


def _generated_words(text):
    """The upper-case tokens of a text shaped like the generator's pseudo-words (not "SYSTEM", "ADMIN")."""
    return [w for w in re.findall(r"\b[A-Z]{2,}\b", text or "") if _PSEUDO.match(w.lower())]


def _texts(r):
    return (r.system, r.data, r.target, r.injection, r.injected_target)


def _phrase_patterns():
    out = []
    for axis, phrases in injections.held_out_phrases().items():
        for p in phrases:
            slot = re.escape("{payload}")
            out.append((axis, p, re.compile(re.escape(p).replace(slot, r"[A-Z0-9 -]+?"), re.I)))
            for frag in re.split(r"\{\w+\}", p):  # the words around a slot, when there are enough of them
                if len(frag.split()) >= 3:
                    out.append((axis, p, re.compile(re.escape(frag.strip()), re.I)))
    return out


def test_validation_holds_no_held_out_content(splits, cfg):
    val = splits["val"]
    inj = [r for r in val if r.kind == "injected"]
    assert inj and len(inj) == cfg.data.n_val
    assert not any(r.held_out for r in val) and not any(r.novel for r in val)
    assert {r.family for r in inj} <= set(attacks.training_families(cfg.data.held_out_families))
    eval_only = {t.id for t in attacks.BUILTIN_TEMPLATES if "val" not in t.splits}
    assert not any(r.template_id in eval_only for r in inj)
    pats = _phrase_patterns()
    for r in val:
        for text in filter(None, _texts(r)):
            for axis, phrase, pat in pats:
                assert not pat.search(text), (axis, phrase, r.id, text)
    # no test-class or witness-class generated string anywhere in training texts
    for file in TRAINING_FILES:
        for r in splits[file]:
            for w in (w for t in _texts(r) for w in _generated_words(t)):
                assert world.string_class(w) == "train", (file, r.id, w)
    # the held-out task is never requested inside validation data, nor is its answer the injected target
    held_reqs = [q for t in injections.HELD_OUT_TASKS for q in world.TASKS[t].test_requests]
    for r in inj:
        assert not any(q in r.data for q in held_reqs), r.id
        if r.goal == "task_hijack":
            doc = world.parse_document(r.clean_data)
            held = [world.answer(world.TaskInstance(t), doc) for t in injections.HELD_OUT_TASKS
                    if world.TASKS[t].doc_kind == doc.kind]
            assert r.injected_target not in held, r.id
    assert any(r.goal == "task_hijack" and r.task in ("classify_review", "review_product") for r in inj)


def test_the_scanner_is_not_vacuous(splits):
    """The same scans find test-only content in the test split (so their silence on validation means something)."""
    classes = Counter(world.string_class(w) for r in splits["test"] for t in _texts(r) for w in _generated_words(t))
    assert classes["test"] > 0 and classes["witness"] > 0
    pats = _phrase_patterns()
    hit_axes = {axis for r in splits["test"] for t in filter(None, _texts(r)) for axis, _, pat in pats if pat.search(t)}
    assert hit_axes >= {"phrasing", "task", "lookalike"}


# ---------------------------------------------------------------------------------------------
# c. the test split has items on every held-out axis


def test_test_split_has_items_on_every_axis(splits):
    test = splits["test"]
    inj = [r for r in test if r.kind == "injected" and r.source == "builtin"]
    for axis in world.CONTENT_AXES:
        assert _test_injected(splits, axis), axis
    assert any(r.held_out for r in inj) and not all(r.held_out for r in inj)
    assert any(not r.novel and not r.held_out for r in inj)  # a seen-content baseline to compare with
    assert {r.family for r in inj if r.held_out} == set(attacks.DEFAULT_HELD_OUT)
    test_phr = {p for pool in (injections.OUTPUT_REQUESTS, injections.LEAK_REQUESTS, injections.REFUSAL_REQUESTS) for p in pool["test"]}
    for r in _test_injected(splits, "payload"):
        assert r.goal == "output_hijack" and world.string_class(r.injected_target) == "test"
    for r in _test_injected(splits, "task"):
        doc = world.parse_document(r.clean_data)
        assert r.goal == "task_hijack" and r.injected_target == doc.fields["author"] and "phrasing" in r.novel
    for r in _test_injected(splits, "phrasing"):
        if r.goal in ("output_hijack", "prompt_leak", "refusal"):
            assert any(re.search(re.escape(p).replace(re.escape("{payload}"), r".+?"), r.injection, re.I) or p in r.injection
                       for p in test_phr) or r.family == "obfuscation", r
    for r in inj:  # items without the payload axis use training-class payloads
        if r.goal == "output_hijack" and not (r.novel and "payload" in r.novel):
            assert world.string_class(r.injected_target) == "train", r.id
    probes = [r for r in test if r.kind in ("probe_system", "probe_data")]
    assert probes
    for r in probes:
        assert world.string_class(r.injected_target) == "witness", r.injected_target
    payloads = {r.injected_target for r in inj if r.goal == "output_hijack"}
    assert not payloads & {r.injected_target for r in probes}


def test_goal_request_returns_the_axes_it_used():
    rng = random.Random(2)
    doc = world.make_document("review", rng)
    target = doc.fields["label"]
    z, o, used = injections.goal_request("output_hijack", doc, "S.", target, rng)
    assert used == () and world.string_class(o) == "train" and o in z
    z, o, used = injections.goal_request("output_hijack", doc, "S.", target, rng, novel=("payload",))
    assert used == ("payload",) and world.string_class(o) == "test"
    z, o, used = injections.goal_request("refusal", doc, "S.", target, rng, novel=("payload", "task"))
    assert used == () and z in injections.REFUSAL_REQUESTS["train"] and o == injections.REFUSAL
    z, o, used = injections.goal_request("prompt_leak", doc, "S.", target, rng, novel=("phrasing",))
    assert used == ("phrasing",) and z in injections.LEAK_REQUESTS["test"] and o == "S."
    z, o, used = injections.goal_request("task_hijack", doc, "S.", target, rng, novel=("task",))
    assert used == ("phrasing", "task") and o == doc.fields["author"] and z in world.TASKS["review_author"].test_requests
    for _ in range(50):  # without the task axis the held-out task is never requested
        z, o, used = injections.goal_request("task_hijack", doc, "S.", target, rng)
        assert o != doc.fields["author"] and used == ()
    rec = world.make_document("record", rng)  # no held-out task applies to a record: the axis is not used
    z, o, used = injections.goal_request("task_hijack", rec, "S.", rec.fields["name"], rng, novel=("task",))
    assert "task" not in used and o == rec.fields["city"]
    with pytest.raises(ValueError, match="held-out axis"):
        injections.goal_request("refusal", doc, "S.", target, rng, novel=("family",))
    with pytest.raises(ValueError, match="no train request"):
        injections.request_for_task(world.TaskInstance("review_author"), rng)


# ---------------------------------------------------------------------------------------------
# d. generated strings: disjoint classes, never a word of the world


def test_generated_string_classes_are_disjoint_words_outside_the_vocabulary():
    first, last = world.person_names()
    vocab = {w for s in world.CITIES + world.COLOURS + world.PRODUCTS + world.GROCERIES + world.DAYS + world.POS_ADJ
             + world.NEG_ADJ + first + last + tuple(calendar.month_name[1:]) for w in re.findall(r"[a-z]+", s.lower())}
    words = {}
    for cls in world.STRING_CLASSES:
        rng = random.Random(f"classes:{cls}")
        strings = [world.generated_string(rng, cls) for _ in range(2000)]
        assert len(set(strings)) > 1800, cls  # fresh strings, not a small pool
        words[cls] = {w for s in strings for w in re.findall(r"[A-Z]+", s)}
        for s in strings:
            assert s == s.upper() and world.string_class(s) == cls, (cls, s)
            assert re.fullmatch(r"[A-Z]+(-\d\d| [A-Z]+)?", s), s
            assert not set(re.findall(r"[a-z]+", s.lower())) & vocab, s
        assert all(world.string_class(w) == cls for w in words[cls])
    classes = list(words)
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            assert not words[a] & words[b], (a, b, sorted(words[a] & words[b])[:5])
    assert injections.witness_word(random.Random(0)) and world.string_class(injections.witness_word(random.Random(0))) == "witness"
    assert world.string_class(injections.payload(random.Random(0), "test")) == "test"
    assert not set(world.payload_pool()) & set(world.payload_pool(cls="test"))
    with pytest.raises(ValueError, match="unknown string class"):
        world.generated_string(random.Random(0), "val")
