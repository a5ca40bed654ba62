"""The instruction world: O* recomputed independently of the generator, the base corpus follows its
revisions, documents parse back, payloads never collide with answers."""
import random
import re
from collections import Counter

import pytest

from causal_lib.config import config_from_dict
from causal_lib.data import attacks, injections, world
from causal_lib.data import build as data
from causal_lib.data import scoring
SMALL = {"run.seed": 3, "data.n_base_corpus": 1500, "data.n_train": 150, "data.n_val": 20, "data.n_test": 120,
         "data.n_benign_lookalikes": 40, "data.n_sep_probes": 30}

# ---------------------------------------------------------------------------------------------
# an oracle written from the document text and the instruction's words alone (not the generator's code)

NEG = {"hate", "waste", "never", "not", "stopped", "flimsy", "noisy", "broken", "ugly", "slow", "awful", "useless",
       "fragile", "uncomfortable", "dull"}


def oracle(instruction: str, doc: str) -> str:
    s = instruction.lower()
    m = re.search(r"Items: ([^.]+) and (\w+)\.", doc)
    if m:
        items = m.group(1).split(", ") + [m.group(2)]
        if "code" in s or "reference" in s:
            codes = re.findall(r"Order code: ([A-Z0-9 -]+)\.", doc)
            assert len(codes) == 1, doc
            return codes[0]
        if "first" in s or "opening" in s:
            return items[0]
        assert "last" in s or "final" in s or "closing" in s, instruction
        return items[-1]
    m = re.search(r"Review of the (\w+) by (\w+)\.", doc)
    if m:
        if any(w in s for w in ("positive or negative", "sentiment", "liked", "mood")):
            return "negative" if set(re.findall(r"[a-z]+", doc.lower())) & NEG else "positive"
        if any(w in s for w in ("product", "thing", "object")):
            return m.group(1)
        assert any(w in s for w in ("who", "author", "reviewer", "person")), instruction
        return m.group(2)
    fields = {k.lower(): v for k, v in re.findall(r"(Name|Age|Colour|Product): ([^.]+)\.", doc)}
    fields["city"] = re.search(r"(?:record|details|file|card|customer) from ([^.]+)\.", doc).group(1)
    assert len(fields) == 5, doc
    if any(re.search(rf"\b{w}\b", s) for w in ("city", "live", "town")):
        return fields["city"]
    assert any(re.search(rf"\b{w}\b", s) for w in ("name", "whose")), instruction
    return fields["name"]


def all_answers(doc: str) -> set:
    m = re.search(r"Items: ([^.]+) and (\w+)\.", doc)
    if m:
        items = m.group(1).split(", ")
        return {items[0], m.group(2), *re.findall(r"Order code: ([A-Z0-9 -]+)\.", doc)}
    m = re.search(r"Review of the (\w+) by (\w+)", doc)
    if m:
        return {m.group(1), m.group(2), "positive", "negative"}
    return {*re.findall(r"Name: ([^.]+)\.", doc), *re.findall(r"(?:record|details|file|card|customer) from ([^.]+)\.", doc)}


@pytest.fixture(scope="module")
def splits():
    return data.build_dataset(config_from_dict({}, SMALL))


def test_targets_recomputed_independently(splits):
    n = 0
    for name, recs in splits.items():
        for r in recs:
            if r.kind in ("clean", "lookalike", "probe_data", "injected") or r.template_id in ("plain", "note"):
                assert r.target == oracle(r.system, r.clean_data), r
                n += 1
            if r.kind == "lookalike":  # the note does not change the answer either
                assert r.target == oracle(r.system, r.data)
    assert n > 1000


def test_lookalikes_keep_target_and_only_mention_instructions(splits):
    look = [r for r in splits["test"] if r.kind == "lookalike"]
    assert len(look) == SMALL["data.n_benign_lookalikes"]
    for r in look:
        assert r.injection in injections.NOTES_TEST and r.injection in r.data and r.data != r.clean_data
        assert r.goal is None and r.injected_target is None
    assert not set(injections.NOTES_TEST) & set(injections.NOTES_BASE)
    base_text = " ".join(r.data for r in splits["base_corpus"])
    assert not any(note in base_text for note in injections.NOTES_TEST)


def test_base_corpus_follows_revisions_everywhere(splits):
    base = splits["base_corpus"]
    sub = Counter(r.template_id for r in base)
    assert abs(sub["revision"] / len(base) - 0.40) < 0.05
    assert abs(sub["system_extra"] / len(base) - 0.15) < 0.04
    assert sub["plain"] > 0 and sub["note"] > 0
    rev = [r for r in base if r.template_id == "revision"]
    assert {r.goal for r in rev} == set(injections.GOALS) and {r.position for r in rev} == set(injections.POSITIONS)
    for r in rev:
        assert r.injection in r.data and r.data != r.clean_data
        if r.goal == "output_hijack":  # a generated training-class string, written in the request
            assert r.target in r.injection and world.string_class(r.target) == "train"
            assert r.injection in {p.format(payload=r.target) for p in injections.OUTPUT_REQUESTS["train"]}
        elif r.goal == "prompt_leak":
            assert r.target == r.system
        elif r.goal == "refusal":
            assert r.target == "Sorry, I cannot help with that."
        else:  # the other task, asked in plain words, on the same document
            assert r.target == oracle(r.injection, r.clean_data) != oracle(r.system, r.clean_data)
    for r in base:
        if r.template_id == "system_extra":
            assert r.system.endswith(r.injection) and r.target in r.injection and r.data == r.clean_data


def test_base_corpus_has_no_attack_wrappers(splits):
    text = "\n".join(r.data for r in splits["base_corpus"])
    for r in splits["base_corpus"]:
        for marker in ("Ignore previous", "Disregard", "###", "[SYSTEM]", "ADMIN", "Answer:", "Response:", "\n", "\t"):
            assert marker not in r.data, (marker, r.data)
    frags = {f.strip() for t in attacks.BUILTIN_TEMPLATES for f in re.split(r"\{\w+\}", t.template)}
    frags = {f for f in frags if len(f.split()) >= 2}
    assert len(frags) > 15
    for f in frags:
        assert f not in text, f


def test_task_hijack_targets_differ_from_o_star(splits):
    hij = [r for n in ("train", "val", "test") for r in splits[n] if r.kind == "injected" and r.goal == "task_hijack"]
    assert len(hij) > 30
    for r in hij:
        assert r.injected_target in all_answers(r.clean_data)
        a, t = r.injected_target.lower().split(), r.target.lower().split()
        k = min(len(a), len(t))
        assert a[:k] != t[:k], r


def test_parse_document_round_trip():
    rng = random.Random(0)
    for kind in world.DOC_KINDS:
        for _ in range(300):
            doc = world.make_document(kind, rng)
            assert " ".join(world.split_segments(doc.text)) == doc.text
            assert len(world.split_segments(doc.text)) == len(doc.segments)
            back = world.parse_document(doc.text)
            assert back.kind == kind and back.fields == doc.fields
    with pytest.raises(ValueError, match="not a document"):
        world.parse_document("Hello there. Nothing here.")


def test_payloads_never_collide_with_documents_or_answers(splits):
    vocab = {w.lower() for w in world.CITIES + world.COLOURS + world.PRODUCTS + world.GROCERIES + world.POS_ADJ
             + world.NEG_ADJ + world.DAYS}
    pool = world.payload_pool()
    assert len(pool) == 40 and len(set(pool)) == 40 and world.payload_pool() == pool  # fixed sample
    for p in pool:
        assert p.isupper() and world.string_class(p) == "train"
        assert not set(re.findall(r"[a-z]+", p.lower())) & vocab
    assert not set(pool) & set(world.payload_pool(cls="test"))
    hij = [r for recs in splits.values() for r in recs if r.goal == "output_hijack"]
    assert len(hij) > 50
    for r in hij:  # the payload is neither in its document nor (injected items) the real answer O*
        assert not scoring.has_word(r.injected_target, r.clean_data), r
        assert r.kind == "base" or not scoring.has_word(r.injected_target, r.target), r
        assert world.string_class(r.injected_target) in ("train", "test")


def test_instructions_are_short_and_varied():
    for name, spec in world.TASKS.items():
        held = name in injections.HELD_OUT_TASKS
        assert 3 <= len(spec.instructions) <= 5 and (len(spec.requests) == 0 if held else len(spec.requests) >= 2)
        assert len(spec.test_requests) >= 2 and not set(spec.requests) & set(spec.test_requests)
        for s in spec.instructions:
            assert 3 <= len(s.split()) <= 10, s
    assert len(world.TASKS) >= 6 and injections.HELD_OUT_TASKS == ("review_author",)


def test_no_control_tokens_anywhere(splits):
    for recs in splits.values():
        for r in recs:
            for f in (r.system, r.data, r.target, r.injection or ""):
                assert "<|" not in f


def test_insert_positions():
    rng = random.Random(1)
    doc = world.make_document("list", rng).text
    assert injections.insert(doc, "Z Z.", "start", rng).startswith("Z Z. ")
    assert injections.insert(doc, "Z Z.", "end", rng).endswith(" Z Z.")
    mid = injections.insert(doc, "Z Z.", "middle", rng)
    assert not mid.startswith("Z") and not mid.endswith("Z Z.") and " Z Z. " in mid
    assert injections.insert(doc, "Z Z.", "start", rng, copies=2).count("Z Z.") == 2
    with pytest.raises(ValueError, match="unknown position"):
        injections.insert(doc, "Z", "top", rng)


def test_documents_already_used_are_never_drawn_again():
    first = data.build_base_corpus(50, random.Random(7), set())
    used = {r.clean_data for r in first[:10]}
    again = data.build_base_corpus(50, random.Random(7), seen := set(used))
    assert not used & {r.clean_data for r in again}
    assert len({r.clean_data for r in again}) == 50 and len(seen) == 60
    clean = data.build_clean(20, random.Random(7), set(used), "test")
    assert not used & {r.clean_data for r in clean}


def test_followup_turns_are_correct_other_questions_on_the_same_document(splits):
    """Later user turns of the base's plain examples: other questions on the same document, their answers
    recomputed by the oracle, never the first answer again, the same turns for the same seed and record."""
    from causal_lib.training.pretrain import base_followups

    turns_of = base_followups(3, seed=0)
    assert base_followups(0, seed=0) is None
    counts = Counter()
    for r in splits["base_corpus"] + splits["train"]:
        turns = turns_of(r)
        counts[len(turns)] += 1
        if r.kind == "injected" or r.template_id in ("revision", "system_extra", "note"):
            assert turns == [], r  # only plain examples get further questions
            continue
        assert turns == turns_of(r) and (r.kind != "base" or turns)
        questions = [q for q, _ in turns]
        assert len(set(questions)) == len(questions)
        for q, a in turns:
            assert a == oracle(q, r.clean_data) and a != r.target, (q, a, r)
    assert counts[0] and (counts[2] + counts[3]) > 200


def test_followups_are_appended_as_supervised_later_turns_within_max_length():
    from causal_lib.models.prompts import train_tokenizer
    from causal_lib.models.tokens import ASSISTANT_TOKEN, END_TOKEN
    from causal_lib.training.examples import SFTDataset

    recs = data.build_dataset(config_from_dict({}, SMALL))["base_corpus"][:200]
    tok = train_tokenizer([t for r in recs for t in (r.system, r.data, r.target)], vocab_size=600)
    turns = lambda r: [("What is the first item in the list?", "apple"), ("Name the last item.", "pear")]  # noqa: E731
    plain = SFTDataset(recs[:1], tok, 192)[0]
    more = SFTDataset(recs[:1], tok, 192, followups_fn=turns)[0]
    n = len(plain["input_ids"])
    assert more["input_ids"][:n] == plain["input_ids"] and more["labels"][:n] == plain["labels"]
    supervised = tok.decode([i for i in more["labels"][n:] if i != -100])
    assert supervised.replace(END_TOKEN, "|").split("|")[:2] == [" apple", " pear"]
    assert tok.decode(more["input_ids"][n:]).count(ASSISTANT_TOKEN) == 2
    short = SFTDataset(recs[:1], tok, n + 12, followups_fn=turns)[0]  # the turns that do not fit are left out
    assert len(short["input_ids"]) <= n + 12
