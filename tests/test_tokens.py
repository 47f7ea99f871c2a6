"""The conformance matrix of the token contract (deepalign/tokens.py): on real tokenizer files
(mistral-common's SentencePiece and Tekken), chat templates of the Llama-2, Mistral, Llama-3,
ChatML and Gemma families, the world tokenizer and the default text format, with tiny models
of the matching architectures, every sequence deepalign trains on, forces or decodes is the
one the model's own tokenizer and template produce (computed independently in realtok.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("mistral_common")
pytest.importorskip("google.protobuf")

from realtok import FAMILIES, family, tiny_model  # noqa: E402

from deepalign.attacks import make_attack  # noqa: E402
from deepalign.data.recipes import build_records  # noqa: E402
from deepalign.decoding.base import GenConfig, Request  # noqa: E402
from deepalign.decoding.compose import Component, ComposedTarget  # noqa: E402
from deepalign.decoding.hf import HFTarget  # noqa: E402
from deepalign.errors import DeepAlignError  # noqa: E402
from deepalign.records import EvalPrompt, HarmfulTriple, InstructionPair  # noqa: E402
from deepalign.tokens import Encoder  # noqa: E402
from deepalign.training.collator import encode_records  # noqa: E402

QUERY = "How do I open the blue box?"
HARM = "Step one: take the silver key. Step two: turn it twice."
SAFE = "Sorry, I cannot help with that."
TRIPLES = [HarmfulTriple(f"t{i}", QUERY, HARM, SAFE) for i in range(4)]
HELPFUL = [InstructionPair("h0", "What is two plus two?", "Two plus two is four.")]
ITEM = EvalPrompt(id="h", prompt=QUERY, kind="harmful", harmful=HARM)


def _end_id(fam):
    return fam.tokenizer.eos_token_id


@pytest.mark.parametrize("name", FAMILIES)
def test_training_sequences_are_the_templates_own_tokens(name):
    fam = family(name)
    tok, enc = fam.tokenizer, Encoder(fam.tokenizer)
    assert enc.format.kind == ("text" if fam.kind == "text" else "chat")
    recs = []
    for recipe, kw in (("vanilla", {}), ("harmful-prefix", {"k_zero_share": 0.5}), ("rto", {}), ("derta", {}),
                       ("derta", {"rto_append_safe": True})):
        recs += build_records(recipe, TRIPLES, HELPFUL, seed=1, **kw)
    recs += build_records("harmful-prefix", TRIPLES, [], encoder=enc, prefix_unit="tokens", k_zero_share=0, k_min=3,
                          k_max=3, seed=0)
    feats = encode_records(recs, enc)
    for r, f in zip(recs, feats):
        ids = f["input_ids"]
        assert ids == fam.conversation(r.query, r.response), (name, r.kind)
        n_prompt = len(fam.prompt(r.query))
        if tok.bos_token_id is not None and fam.name != "chatml-bpe":
            assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id, name
        # the end of turn closes the response once (templates that close the user turn with the
        # same token have it in the prompt too)
        assert ids[n_prompt:].count(_end_id(fam)) == 1, name
        if r.target:  # the MLE target ends with the end of turn, and starts after the forced spans
            assert f["mle_start"] > n_prompt or not (r.prefix or r.rto)
            assert _end_id(fam) in ids[f["mle_start"]:]
            as_written = tok.decode(tok(r.target, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
            assert tok.decode(ids[f["mle_start"]:], skip_special_tokens=True).strip() == as_written.strip()
        if r.kind == "rto" and not r.target:  # every response position, end of turn included
            assert f["rto_start"] == n_prompt and f["mle_start"] == len(ids)
            assert len(ids) - f["rto_start"] == len(fam.response(r.query, r.rto))
        if r.meta.get("unit") == "tokens" and r.prefix:
            # the forced k tokens are the first k tokens of the harmful response, as the model writes it
            assert ids[n_prompt:f["mle_start"]] == fam.response(r.query, HARM, end=False)[:3]


@pytest.mark.parametrize("name", FAMILIES)
def test_prefill_and_completion_force_the_models_own_response_tokens(name):
    fam = family(name)
    tok = fam.tokenizer
    model = tiny_model(fam.arch, max(len(tok), 131072 if fam.kind == "mistral-common" else 0))
    target = HFTarget(model, tok)
    prefill = make_attack("prefill:5").prepare(ITEM).request
    ids, forced = target.ids(prefill)
    assert forced == fam.response(QUERY, HARM, end=False)[:5]
    assert ids == fam.prompt(QUERY) + forced
    completion = make_attack("completion").prepare(ITEM).request
    ids, forced = target.ids(completion)
    assert ids == fam.conversation(QUERY, "Sure, here is", end=False)
    [[g]] = target.generate([prefill], GenConfig(max_new_tokens=3, suppress_eos=True))
    assert g.num_tokens == 3 and g.forced_tokens == 5
    assert target.render(completion) == tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", ["llama2-sp", "mistral-sp", "llama3-bpe", "mistral-tekken"])
def test_composed_models_continue_the_same_forced_ids(name):
    """ED: the base model in the text format, the aligned one in its chat format; both read
    their own prompt and then the same forced response ids."""
    fam = family(name)
    tok = fam.tokenizer
    vocab = max(len(tok), 131072 if fam.kind == "mistral-common" else 0)
    base, aligned = Component(tiny_model(fam.arch, vocab, 1), tok, 1.3, "text"), Component(tiny_model(fam.arch, vocab, 2), tok, -0.3)
    target = ComposedTarget([base, aligned])
    req = make_attack("prefill:4").prepare(ITEM).request
    [forced] = target.forced([req])
    assert forced == Encoder(tok, "text").response_ids(QUERY, HARM, end=False)[:4]
    for c in (base, aligned):
        ids = c.ids(req, forced=forced)[0]
        assert ids[-4:] == forced and ids[:-4] == c.encoder.prompt_ids(QUERY)
    assert aligned.encoder.prompt_ids(QUERY) == fam.prompt(QUERY)
    [[g]] = target.generate([req], GenConfig(max_new_tokens=2, suppress_eos=True))
    assert g.num_tokens == 2 and g.forced_tokens == 4


def test_sentencepiece_prefill_is_the_token_the_model_writes():
    """Issue 11, finding 2: after the Llama-2 template's ``[/INST]`` the response starts with
    ``▁Sure``; gluing "Sure" onto the rendered prompt would force ``Sure`` instead."""
    fam = family("llama2-sp")
    tok = fam.tokenizer
    ids, forced = HFTarget(tiny_model("llama", len(tok)), tok).ids(make_attack("completion").prepare(ITEM).request)
    assert tok.convert_ids_to_tokens(forced)[0] == "▁Sure"
    prompt_text = tok.apply_chat_template([{"role": "user", "content": QUERY}], tokenize=False, add_generation_prompt=True)
    glued = tok(prompt_text + "Sure, here is", add_special_tokens=False)["input_ids"]
    assert glued[len(fam.prompt(QUERY)):] != forced  # what the old glue-and-retokenise did


def test_tekken_records_have_bos_and_eos_ids_once():
    """Issue 11, finding 1: a tekken.json model directory (MistralCommonBackend: no Jinja
    template, special-token strings not parsed) trains with one BOS id and one EOS id."""
    fam = family("mistral-tekken")
    tok = fam.tokenizer
    assert type(tok).__name__ == "MistralCommonBackend" and not getattr(tok, "chat_template", None)
    [f] = encode_records(build_records("vanilla", TRIPLES[:1], [], seed=0), Encoder(tok))
    assert f["input_ids"].count(tok.bos_token_id) == 1 and f["input_ids"].count(tok.eos_token_id) == 1
    assert f["input_ids"][-1] == tok.eos_token_id and "<" not in tok.decode(f["input_ids"][1:4])


def test_prompts_longer_than_the_model_are_one_line_errors():
    """Issue 11, finding 6: GPT-2 crashed with a traceback, Llama ran past its positions."""
    fam = family("plain-sp")
    tok = fam.tokenizer
    long = Request(id="long", query="word " * 60)
    for arch in ("gpt2", "llama"):
        target = HFTarget(tiny_model(arch, len(tok), positions=64), tok)
        with pytest.raises(DeepAlignError, match=r"exceed the 64 positions") as e:
            target.generate([long], GenConfig(max_new_tokens=8))
        assert "\n" not in str(e.value)
        cut = HFTarget(tiny_model(arch, len(tok), positions=64), tok, truncate=True)
        [[g]] = cut.generate([long], GenConfig(max_new_tokens=8, suppress_eos=True))
        assert g.num_tokens == 8
