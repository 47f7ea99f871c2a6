"""DeRTa recipes: record shapes, counts, k sampling, reference round trip. Records hold raw
text spans; how a model's format tokenises them is tested in test_tokens.py."""

from __future__ import annotations

import json

import pytest

from deepalign.data.recipes import (
    TrainingRecord,
    build_records,
    count_kinds,
    export_reference,
    from_reference,
    harmful_prefix,
    k_statistics,
    load_records,
    save_records,
    to_reference,
)
from deepalign.records import HarmfulTriple, InstructionPair
from deepalign.errors import DeepAlignError


def _triples(n=30, words=12):
    out = []
    for i in range(n):
        harm = " ".join(f"h{i}w{j}" for j in range(words))
        out.append(HarmfulTriple(id=f"t{i}", query=f"how do i do bad thing {i} ?", harmful=harm,
                                 safe=f"Sorry , I cannot help with bad thing {i} ."))
    return out


def _helpful(n=40):
    return [InstructionPair(id=f"p{i}", instruction=f"what is {i} plus 1 ?", response=f"{i} plus 1 is {i + 1} .")
            for i in range(n)]


@pytest.fixture(scope="module")
def world_tok():
    from deepalign.world.tokenizer import build_tokenizer

    texts = [f"{t.query} {t.harmful} {t.safe}" for t in _triples()] + \
            [f"{p.instruction} {p.response}" for p in _helpful()]
    return build_tokenizer(texts)


def test_vanilla_records_are_query_to_safe_plus_helpful():
    recs = build_records("vanilla", _triples(), _helpful(), seed=1)
    assert count_kinds(recs) == {"helpful": 40, "safe": 30}
    r = next(r for r in recs if r.kind == "safe")
    t = next(t for t in _triples() if t.id == r.meta["source"])
    assert (r.query, r.prefix, r.rto, r.target) == (t.query, "", "", t.safe)  # raw text, no format
    assert r.parts() == [t.safe] and r.response == t.safe


def test_harmful_prefix_k_distribution_and_zero_share():
    trip = _triples(n=300, words=12)
    recs = build_records("harmful-prefix", trip, [], seed=0)
    assert count_kinds(recs)["prefix"] == 300
    stats = k_statistics(recs)
    assert stats["k0_share"] == pytest.approx(100 / 300)  # exactly round(1/3 * n)
    ks = [r.meta["k"] for r in recs if r.meta["k"] > 0]
    assert min(ks) == 1 and max(ks) == 10  # U[1, len-2] words, len = 12
    assert len(set(ks)) == 10  # the whole range is used
    for r in recs:
        t = next(t for t in trip if t.id == r.meta["source"])
        k = r.meta["k"]
        if k == 0:
            assert r.prefix == "" and r.parts() == [t.safe]
        else:
            assert r.prefix == " ".join(t.harmful.split()[:k])
            # a space between the forced words and the refusal, as the reference writes them
            assert r.parts() == [r.prefix, " " + t.safe]


def test_k_parameters_share_and_range():
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], seed=3, k_zero_share=0.0,
                         k_min=4, k_max=6)
    ks = [r.meta["k"] for r in recs]
    assert min(ks) >= 4 and max(ks) <= 6 and 0 not in ks
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], seed=3, k_zero_share=1.0)
    assert k_statistics(recs)["k0_share"] == 1.0
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], seed=3, k_zero_share=0, k_max=0)
    assert max(r.meta["k"] for r in recs) <= 12


def test_token_unit_counts_the_response_tokens_of_the_models_format(world_tok):
    from deepalign.tokens import Encoder

    enc = Encoder(world_tok)
    trip = [HarmfulTriple("x", "q ?", "first , mix the gloomdust well .", "sorry , no .")]
    assert harmful_prefix(trip[0].harmful, 3, "tokens", enc, "q ?") == "first , mix"
    assert harmful_prefix(trip[0].harmful, 3, "words") == "first , mix"
    assert harmful_prefix("a,b c", 1, "words") == "a,b"
    recs = build_records("harmful-prefix", trip, [], encoder=enc, prefix_unit="tokens", k_zero_share=0, seed=0)
    assert recs[0].meta["unit"] == "tokens"
    with pytest.raises(DeepAlignError, match="needs a tokenizer"):
        build_records("harmful-prefix", trip, [], prefix_unit="tokens")


def test_derta_and_rto_mix_the_same_triples_in_one_stream():
    trip, helpful = _triples(n=20), _helpful(n=40)
    recs = build_records("derta", trip, helpful, seed=5)
    counts = count_kinds(recs)
    assert counts["prefix"] == 10 and counts["rto"] == 10 and counts["helpful"] == 40
    src_prefix = {r.meta["source"] for r in recs if r.kind == "prefix"}
    src_rto = {r.meta["source"] for r in recs if r.kind == "rto"}
    assert src_prefix == src_rto  # both views of the same triples, as in the reference
    kinds = [r.kind for r in recs]
    assert kinds != sorted(kinds)  # shuffled together
    rto = next(r for r in recs if r.kind == "rto")
    t = next(t for t in trip if t.id == rto.meta["source"])
    assert rto.rto == t.harmful and rto.target == "" and rto.prefix == ""

    recs = build_records("rto", trip, [], seed=5)
    assert count_kinds(recs) == {"safe": 10, "rto": 10}
    recs = build_records("derta", trip, [], seed=5, rto_append_safe=True)
    rto = next(r for r in recs if r.kind == "rto")
    t = next(t for t in trip if t.id == rto.meta["source"])
    assert rto.rto == t.harmful and rto.target == t.safe and rto.parts() == [t.harmful, " " + t.safe]


def test_mixture_counts_ratio_and_seed():
    trip, helpful = _triples(n=30), _helpful(n=40)
    a = build_records("derta", trip, helpful, seed=1)
    b = build_records("derta", trip, helpful, seed=1)
    c = build_records("derta", trip, helpful, seed=2)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.to_dict() for r in a] != [r.to_dict() for r in c]
    recs = build_records("vanilla", trip, helpful, n_helpful=20, safety_ratio=0.5)
    assert count_kinds(recs) == {"helpful": 20, "safe": 10}
    recs = build_records("derta", trip, helpful, n_helpful=0, n_safety=8, rto_share=0.25)
    assert count_kinds(recs)["rto"] == 2 and count_kinds(recs)["prefix"] == 6
    with pytest.raises(DeepAlignError, match="only 30 are available"):
        build_records("vanilla", trip, helpful, n_safety=31)
    with pytest.raises(DeepAlignError, match="to build records"):
        build_records("dpo", trip, helpful)
    with pytest.raises(DeepAlignError, match="k_zero_share"):
        build_records("derta", trip, helpful, k_zero_share=1.5)


def test_records_jsonl_round_trip(tmp_path):
    recs = build_records("derta", _triples(n=10), _helpful(n=5), seed=0)
    save_records(recs, tmp_path / "r.jsonl")
    back = load_records(tmp_path / "r.jsonl")
    assert [r.to_dict() for r in back] == [r.to_dict() for r in recs]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "a", "kind": "weird", "query": "p", "target": "t"}) + "\n")
    with pytest.raises(DeepAlignError, match=r"bad.jsonl:1: field \"kind\" must be one of"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text(json.dumps({"id": "a", "kind": "safe", "query": "p"}) + "\n")
    with pytest.raises(DeepAlignError, match="bad2.jsonl:1: record has neither"):
        load_records(tmp_path / "bad2.jsonl")


def test_reference_export_and_import(tmp_path):
    trip, helpful = _triples(n=6), _helpful(n=4)
    recs = build_records("derta", trip, helpful, seed=0)
    n = export_reference(recs, tmp_path / "ref.json", eos="</s>")
    assert n == len(recs)
    lines = [json.loads(x) for x in (tmp_path / "ref.json").read_text().splitlines()]
    for rec, line in zip(recs, lines):
        assert line["safe"] == ("true" if rec.kind == "rto" else "false")
        assert line["prefix"].startswith("[INST] " + rec.query + " [\\INST]")
        if rec.kind == "rto":
            t = next(t for t in trip if t.id == rec.meta["source"])
            assert line["text"] == " " + t.harmful + "</s>"
        if rec.kind == "prefix" and rec.meta["k"] > 0:
            assert line["prefix"].endswith(" " + rec.prefix)
    # import: the reference template is dropped (the query is trained in the model's own format)
    from deepalign.data.reference import load_reference_training

    back = load_records(tmp_path / "ref.json")
    assert len(back) == len(recs)
    for r in back:
        orig = next(o for o in recs if o.query == r.query and (o.kind == r.kind or r.kind == "mle"))
        assert (r.prefix, r.rto, r.target) == (orig.prefix, orig.rto, orig.target)
    assert {r.kind for r in back} == {"mle", "prefix", "rto"}
    assert len(from_reference(load_reference_training(tmp_path / "ref.json"))) == len(recs)
    with pytest.raises(DeepAlignError, match="no reference-format equivalent"):
        to_reference(build_records("rto", trip, [], rto_append_safe=True))


def test_record_validation():
    with pytest.raises(DeepAlignError, match='missing field "query"'):
        TrainingRecord.from_dict({"id": "a", "kind": "safe"})
    with pytest.raises(DeepAlignError, match='field "target" must be a string'):
        TrainingRecord.from_dict({"id": "a", "kind": "safe", "query": "p", "target": 3})
    with pytest.raises(DeepAlignError, match="older records file"):
        TrainingRecord.from_dict({"id": "a", "kind": "safe", "prompt": "p", "target": "t"})
