"""DeRTa recipes: record shapes, counts, k sampling, prompt formats, reference round trip."""

from __future__ import annotations

import json

import pytest

from deepalign.data.recipes import (
    DEFAULT_PLAIN_TEMPLATE,
    TrainingRecord,
    build_records,
    export_reference,
    from_reference,
    harmful_prefix,
    k_statistics,
    load_records,
    prompt_format,
    save_records,
    summarize,
    to_reference,
)
from deepalign.data.records import HarmfulTriple, InstructionPair
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


def plain():
    return prompt_format(None, DEFAULT_PLAIN_TEMPLATE)


def test_vanilla_records_are_query_to_safe_plus_helpful():
    recs = build_records("vanilla", _triples(), _helpful(), plain(), seed=1)
    assert summarize(recs) == {"helpful": 40, "safe": 30}
    r = next(r for r in recs if r.kind == "safe")
    t = next(t for t in _triples() if t.id == r.meta["source"])
    assert r.prompt == f"Query: {t.query}\nResponse:"
    assert r.prefix == "" and r.rto == ""
    assert r.target == " " + t.safe  # plain template: leading space (as the reference), no eos without tokenizer
    assert r.text == r.prompt + r.target


def test_harmful_prefix_k_distribution_and_zero_share():
    trip = _triples(n=300, words=12)
    recs = build_records("harmful-prefix", trip, [], plain(), seed=0)
    assert summarize(recs)["prefix"] == 300
    stats = k_statistics(recs)
    assert stats["k0_share"] == pytest.approx(100 / 300)  # exactly round(1/3 * n)
    ks = [r.meta["k"] for r in recs if r.meta["k"] > 0]
    assert min(ks) == 1 and max(ks) == 10  # U[1, len-2] words, len = 12
    assert len(set(ks)) == 10  # the whole range is used
    for r in recs:
        t = next(t for t in trip if t.id == r.meta["source"])
        k = r.meta["k"]
        if k == 0:
            assert r.prefix == "" and r.target == " " + t.safe
        else:
            assert r.prefix == " " + " ".join(t.harmful.split()[:k])
            assert r.target == " " + t.safe  # a space between the forced words and the refusal
            assert r.meta["response_prefix"] == " ".join(t.harmful.split()[:k])


def test_k_parameters_share_and_range():
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], plain(), seed=3, k_zero_share=0.0,
                         k_min=4, k_max=6)
    ks = [r.meta["k"] for r in recs]
    assert min(ks) >= 4 and max(ks) <= 6 and 0 not in ks
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], plain(), seed=3, k_zero_share=1.0)
    assert k_statistics(recs)["k0_share"] == 1.0
    recs = build_records("harmful-prefix", _triples(n=60, words=12), [], plain(), seed=3, k_zero_share=0, k_max=0)
    assert max(r.meta["k"] for r in recs) <= 12


def test_token_unit_uses_tokenizer_offsets(world_tok):
    fmt = prompt_format(world_tok)
    trip = [HarmfulTriple("x", "q ?", "first , mix the gloomdust well .", "sorry , no .")]
    assert harmful_prefix(trip[0].harmful, 3, "tokens", world_tok) == "first , mix"
    assert harmful_prefix(trip[0].harmful, 3, "words") == "first , mix"
    assert harmful_prefix("a,b c", 2, "tokens", world_tok) == "a,"
    assert harmful_prefix("a,b c", 1, "words") == "a,b"
    recs = build_records("harmful-prefix", trip * 1, [], fmt, tokenizer=world_tok, prefix_unit="tokens",
                         k_zero_share=0, seed=0)
    assert recs[0].meta["unit"] == "tokens"


def test_derta_and_rto_mix_the_same_triples_in_one_stream():
    trip, helpful = _triples(n=20), _helpful(n=40)
    recs = build_records("derta", trip, helpful, plain(), seed=5)
    counts = summarize(recs)
    assert counts["prefix"] == 10 and counts["rto"] == 10 and counts["helpful"] == 40
    src_prefix = {r.meta["source"] for r in recs if r.kind == "prefix"}
    src_rto = {r.meta["source"] for r in recs if r.kind == "rto"}
    assert src_prefix == src_rto  # both views of the same triples, as in the reference
    kinds = [r.kind for r in recs]
    assert kinds != sorted(kinds)  # shuffled together
    rto = next(r for r in recs if r.kind == "rto")
    t = next(t for t in trip if t.id == rto.meta["source"])
    assert rto.rto == " " + t.harmful and rto.target == "" and rto.prefix == ""

    recs = build_records("rto", trip, [], plain(), seed=5)
    assert summarize(recs) == {"safe": 10, "rto": 10}
    recs = build_records("derta", trip, [], plain(), seed=5, rto_append_safe=True)
    rto = next(r for r in recs if r.kind == "rto")
    t = next(t for t in trip if t.id == rto.meta["source"])
    assert rto.rto == " " + t.harmful and rto.target == " " + t.safe


def test_mixture_counts_ratio_and_seed():
    trip, helpful = _triples(n=30), _helpful(n=40)
    a = build_records("derta", trip, helpful, plain(), seed=1)
    b = build_records("derta", trip, helpful, plain(), seed=1)
    c = build_records("derta", trip, helpful, plain(), seed=2)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.to_dict() for r in a] != [r.to_dict() for r in c]
    recs = build_records("vanilla", trip, helpful, plain(), n_helpful=20, safety_ratio=0.5)
    assert summarize(recs) == {"helpful": 20, "safe": 10}
    recs = build_records("derta", trip, helpful, plain(), n_helpful=0, n_safety=8, rto_share=0.25)
    assert summarize(recs)["rto"] == 2 and summarize(recs)["prefix"] == 6
    with pytest.raises(DeepAlignError, match="only 30 are available"):
        build_records("vanilla", trip, helpful, plain(), n_safety=31)
    with pytest.raises(DeepAlignError, match="unknown recipe"):
        build_records("dpo", trip, helpful, plain())
    with pytest.raises(DeepAlignError, match="k-zero share"):
        build_records("derta", trip, helpful, plain(), k_zero_share=1.5)


def test_chat_template_format_finds_lead_and_end(world_tok):
    fmt = prompt_format(world_tok)
    assert fmt.kind == "chat"
    assert fmt.prompt("who is it ?") == "<bos><user> who is it ? <assistant>"
    assert fmt.lead == " " and fmt.end == "<eos>"
    recs = build_records("vanilla", _triples(n=2), [], fmt)
    assert recs[0].text.startswith("<bos><user> how do i") and recs[0].text.endswith(" .<eos>")
    # an explicit plain template wins over the chat template
    fmt = prompt_format(world_tok, "{bos}Q: {query}\nA:")
    assert fmt.kind == "plain" and fmt.prompt("x") == "<bos>Q: x\nA:" and fmt.end == "<eos>"
    with pytest.raises(DeepAlignError, match="must contain"):
        prompt_format(world_tok, "no query here")
    with pytest.raises(DeepAlignError, match="unknown placeholder"):
        prompt_format(world_tok, "{query} {system}")


def test_chat_format_of_a_real_mistral_template():
    pytest.importorskip("mistral_common")
    from test_training_tokenizers import tekken_fast

    tok = tekken_fast()
    fmt = prompt_format(tok)
    assert fmt.kind == "chat" and fmt.prompt("hi") == "<s>[INST]hi[/INST]"
    assert fmt.lead == "" and fmt.end == "</s>"


def test_records_jsonl_round_trip(tmp_path):
    recs = build_records("derta", _triples(n=10), _helpful(n=5), plain(), seed=0)
    save_records(recs, tmp_path / "r.jsonl")
    back = load_records(tmp_path / "r.jsonl")
    assert [r.to_dict() for r in back] == [r.to_dict() for r in recs]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "a", "kind": "weird", "prompt": "p", "target": "t"}) + "\n")
    with pytest.raises(DeepAlignError, match=r"bad.jsonl:1: field \"kind\" must be one of"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text(json.dumps({"id": "a", "kind": "safe", "prompt": "p"}) + "\n")
    with pytest.raises(DeepAlignError, match="bad2.jsonl:1: record has neither"):
        load_records(tmp_path / "bad2.jsonl")


def test_reference_export_and_import(tmp_path):
    trip, helpful = _triples(n=6), _helpful(n=4)
    recs = build_records("derta", trip, helpful, plain(), seed=0)
    n = export_reference(recs, tmp_path / "ref.json", eos="</s>")
    assert n == len(recs)
    lines = [json.loads(x) for x in (tmp_path / "ref.json").read_text().splitlines()]
    by_id = {r.id: r for r in recs}
    for rec, line in zip(recs, lines):
        assert line["safe"] == ("true" if rec.kind == "rto" else "false")
        assert line["prefix"].startswith("[INST] " + rec.query + " [\\INST]")
        if rec.kind == "rto":
            t = next(t for t in trip if t.id == rec.meta["source"])
            assert line["text"] == " " + t.harmful + "</s>"
        if rec.kind == "prefix" and rec.meta["k"] > 0:
            assert line["prefix"].endswith(" " + rec.meta["response_prefix"])
    # import: re-rendered with our format, same spans as the records we built
    from deepalign.data.reference import load_reference_training

    fmt = prompt_format(None, DEFAULT_PLAIN_TEMPLATE.replace("{bos}", ""))
    fmt.end = "</s>"
    back = load_records(tmp_path / "ref.json", fmt)
    assert len(back) == len(recs)
    for r in back:
        orig = next(o for o in recs if o.query == r.query and (o.kind == r.kind or r.kind == "mle"))
        assert r.rto == orig.rto + ("</s>" if r.kind == "rto" else "")
        if r.kind == "prefix":
            assert r.prefix == orig.prefix and r.target == orig.target + "</s>"
    assert {r.kind for r in back} == {"mle", "prefix", "rto"}
    assert len(from_reference(load_reference_training(tmp_path / "ref.json"), fmt)) == len(recs)
    with pytest.raises(DeepAlignError, match="no reference-format equivalent"):
        to_reference(build_records("rto", trip, [], plain(), rto_append_safe=True))
    assert by_id  # silence unused


def test_record_validation():
    with pytest.raises(DeepAlignError, match='missing field "prompt"'):
        TrainingRecord.from_dict({"id": "a", "kind": "safe"})
    with pytest.raises(DeepAlignError, match='field "target" must be a string'):
        TrainingRecord.from_dict({"id": "a", "kind": "safe", "prompt": "p", "target": 3})
