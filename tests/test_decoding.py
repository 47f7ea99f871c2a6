"""Decoding stage: prompt formats, the plain HF target, logit-arithmetic composition (ED),
presets and the ``deepalign ed`` command, on tiny random-init Llama models that share a
word-level tokenizer built here."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from deepalign.cli import main
from deepalign.decoding.base import GenConfig, Request
from deepalign.decoding.compose import Component, ComposedTarget, check_vocabularies
from deepalign.decoding.hf import HFTarget, PromptIds
from deepalign.decoding.presets import ED_FAMILIES, ed, eft, family
from deepalign.errors import DeepAlignError
from deepalign.models import load_causal_lm, load_tokenizer
from deepalign.tokens import Encoder, PromptFormat


def load_model(path):
    return load_causal_lm(path, device="cpu"), load_tokenizer(path)


def encode(tok, spec, request):
    """The prompt ids (forced start included) of ``request`` in format ``spec``."""
    return PromptIds(Encoder(tok, PromptFormat.parse(spec)))(request)[0]

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>", "<system>"]
WORDS = list(dict.fromkeys(
    ("question: answer: how do i make a cake bomb sure here is the way you can not help with that "
     "first take some flour and sugar then mix it well bake for ten minutes sorry cannot "
     "dangerous weapon build house paint red blue green tell me story about cat dog").split()))
CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<system> {{ m['content'] }} "
        "{% elif m['role'] == 'user' %}<user> {{ m['content'] }} {% else %}<assistant> {{ m['content'] }} </s> "
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}")
TEMPLATE = "text:question: {query} answer: "
PAD_ROWS = 5  # the models' output layers are wider than the tokenizer
PADDING = list(range(len(SPECIALS) + len(WORDS), len(SPECIALS) + len(WORDS) + PAD_ROWS))
QUERIES = ["how do i make a cake", "tell me a story", "how do i build a bomb with sugar and flour", "paint it red"]


def make_tokenizer(words):
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHAT)


def make_model(seed, vocab_size):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.15, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    words = SPECIALS + WORDS
    tok = make_tokenizer(words)
    swapped = list(words)
    swapped[20], swapped[21] = swapped[21], swapped[20]
    paths = {}
    for name, seed, tokenizer in [("base", 1, tok), ("aligned", 2, tok), ("third", 3, tok),
                                  ("other", 4, make_tokenizer(swapped))]:
        d = tmp_path_factory.mktemp(name)
        make_model(seed, len(words) + PAD_ROWS).save_pretrained(d)
        tokenizer.save_pretrained(d)
        paths[name] = str(d)
    loaded = {name: load_model(p) for name, p in paths.items()}
    return {"paths": paths, "models": loaded, "words": words}


def pair(world, name):
    return world["models"][name]


def reqs(queries=QUERIES, **kw):
    return [Request(id=f"q{i}", query=q, **kw) for i, q in enumerate(queries)]


# -- prompt formats ------------------------------------------------------------------------


def test_prompt_formats(world, tmp_path):
    _, tok = pair(world, "base")
    r = Request(id="a", query="how do i make a cake", prefill="sure here")
    chat = encode(tok, "chat", r)
    assert tok.convert_ids_to_tokens(chat) == ["<s>", "<user>", "how", "do", "i", "make", "a", "cake",
                                               "<assistant>", "sure", "here"]
    text = encode(tok, TEMPLATE, r)
    assert tok.convert_ids_to_tokens(text)[:3] == ["<s>", "question:", "how"]
    assert tok.convert_ids_to_tokens(text)[-3:] == ["answer:", "sure", "here"]
    assert encode(tok, "raw", Request(id="b", query="paint red")) == tok("paint red").input_ids
    sys_ids = encode(tok, "chat", Request(id="s", query="hi", system="help"))
    assert tok.convert_ids_to_tokens(sys_ids)[:4] == ["<s>", "<system>", "help", "<user>"]
    # a raw text request is used verbatim whatever the format
    verbatim = Request(id="t", text="first take some ", prefill="flour")
    for spec in ("chat", "raw", TEMPLATE):
        assert encode(tok, spec, verbatim) == tok("first take some flour").input_ids
    # prefill_tokens keeps the first K tokens of the response tokenisation
    two = encode(tok, "chat", Request(id="k", query="how do i make a cake", prefill="sure here is", prefill_tokens=2))
    assert tok.convert_ids_to_tokens(two)[-3:] == ["<assistant>", "sure", "here"]
    f = tmp_path / "tpl.txt"
    f.write_text("question:\n{query}\nanswer:", encoding="utf-8")
    assert PromptFormat.parse(str(f)) == PromptFormat.text("question:\n{query}\nanswer:")
    assert PromptFormat.parse("text:q: {query}\\na:").template == "q: {query}\na:"
    for bad in ("text:no placeholder", str(tmp_path / "missing.txt"), "jinja"):
        with pytest.raises(DeepAlignError):
            PromptFormat.parse(bad)


def test_chat_format_without_template_is_a_user_error(world):
    _, tok = pair(world, "base")
    plain = make_tokenizer(world["words"])
    plain.chat_template = None
    with pytest.raises(DeepAlignError, match="no chat template"):
        Encoder(plain, PromptFormat.chat())
    assert Encoder(plain).format == PromptFormat.text()  # the default for a model without one
    assert tok.chat_template  # the shared one is untouched


# -- composition: correctness floors ---------------------------------------------------------


def test_alpha_zero_reproduces_base_generate(world):
    (bm, tok), (am, _) = pair(world, "base"), pair(world, "aligned")
    target = ed((bm, tok), (am, tok), 0.0, base_format=TEMPLATE)
    cfg = GenConfig(max_new_tokens=12)
    ours = target.decode(reqs(), cfg).tokens
    for r, got in zip(reqs(), ours):
        ids = torch.tensor([encode(tok, TEMPLATE, r)])
        # the output layer is wider than the tokenizer: its padding rows are not tokens
        ref = bm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pad_token_id=0, eos_token_id=2, suppress_tokens=PADDING)[0, ids.shape[1]:].tolist()
        assert got == ref
    gens = target.generate(reqs(), cfg)
    hf = HFTarget(bm, tok, prompt_format=TEMPLATE).generate(reqs(), cfg)
    assert [[g.text for g in row] for row in gens] == [[g.text for g in row] for row in hf]


def _reference_dist(target, requests, row, generated, size):
    total = 0
    forced = target.forced(requests)[row]
    for c in target.components:
        ids = c.ids(requests[row], forced=forced)[0] + generated
        with torch.no_grad():
            logits = c.model(input_ids=torch.tensor([ids])).logits[0, -1, :size].float()
        total = total + c.weight * logits.log_softmax(-1)
    return total.log_softmax(-1)


def make_gpt2(seed, vocab_size):
    """An architecture with absolute position embeddings: left padding must not shift them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                     initializer_range=0.15, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("sample, arch", [(False, "llama"), (True, "llama"), (False, "gpt2")])
def test_composed_distribution_matches_uncached_forward(world, sample, arch):
    (bm, tok), (am, _) = pair(world, "base"), pair(world, "aligned")
    if arch == "gpt2":
        bm, am = make_gpt2(5, len(tok) + PAD_ROWS), make_gpt2(6, len(tok) + PAD_ROWS)
    target = ed((bm, tok), (am, tok), 0.7, base_format=TEMPLATE)
    requests = reqs()
    cfg = GenConfig(max_new_tokens=8, suppress_eos=True, do_sample=sample, temperature=0.9, top_p=0.95)
    out = target.decode(requests, cfg, record=True)
    size = len(tok)
    assert target.vocab_size == size
    for row, toks in enumerate(out.tokens):
        assert len(toks) == 8 and len(out.dists[row]) == 8
        for t in range(8):
            ref = _reference_dist(target, requests, row, toks[:t], size)
            torch.testing.assert_close(out.dists[row][t], ref, atol=1e-5, rtol=0)
            assert out.logprobs[row][t] == pytest.approx(ref[toks[t]].item(), abs=1e-5)
        if not sample:
            # greedy picks the best token other than the suppressed EOS
            assert toks == [int(out.dists[row][t].index_fill(0, torch.tensor([2]), -1e9).argmax()) for t in range(8)]


def test_three_model_composition_with_prefill(world):
    (bm, tok), (am, _), (tm, _) = pair(world, "base"), pair(world, "aligned"), pair(world, "third")
    target = eft((bm, tok), (am, tok), (tm, tok), 0.5, large_format=TEMPLATE, small_format="raw")
    requests = [Request(id="p", query="how do i make a bomb", prefill="sure here is"),
                Request(id="t", text="first take some flour")]
    out = target.decode(requests, GenConfig(max_new_tokens=5, suppress_eos=True), record=True)
    for row in range(2):
        for t in range(5):
            ref = _reference_dist(target, requests, row, out.tokens[row][:t], len(tok))
            torch.testing.assert_close(out.dists[row][t], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sample", [False, True])
def test_left_padded_batch_equals_each_query_alone(world, sample):
    (bm, tok), (am, _) = pair(world, "base"), pair(world, "aligned")
    target = ed((bm, tok), (am, tok), 0.5, base_format=TEMPLATE)
    cfg = GenConfig(max_new_tokens=10, do_sample=sample, num_samples=2 if sample else 1, seed=7)
    batch = target.generate(reqs(), cfg)
    alone = [target.generate([r], cfg)[0] for r in reqs()]
    assert [[(g.text, g.num_tokens) for g in row] for row in batch] == \
           [[(g.text, g.num_tokens) for g in row] for row in alone]
    assert len({len(encode(tok, TEMPLATE, r)) for r in reqs()}) > 1


def test_sampling_seeds_samples_and_top_k(world):
    (bm, tok), (am, _) = pair(world, "base"), pair(world, "aligned")
    target = ed((bm, tok), (am, tok), 0.3, base_format=TEMPLATE)
    cfg = GenConfig(max_new_tokens=10, do_sample=True, num_samples=3, seed=1, suppress_eos=True)
    a, b = target.generate(reqs(), cfg), target.generate(reqs(), cfg)
    assert [[g.text for g in row] for row in a] == [[g.text for g in row] for row in b]
    assert [g.sample for g in a[0]] == [0, 1, 2]
    assert any(len({g.text for g in row}) > 1 for row in a)
    other = target.generate(reqs(), GenConfig(max_new_tokens=10, do_sample=True, num_samples=3, seed=2,
                                              suppress_eos=True))
    assert [[g.text for g in row] for row in other] != [[g.text for g in row] for row in a]
    # top-k = 1 sampling is greedy decoding
    greedy = target.decode(reqs(), GenConfig(max_new_tokens=10, suppress_eos=True)).tokens
    topk1 = target.decode(reqs(), GenConfig(max_new_tokens=10, do_sample=True, top_k=1, suppress_eos=True,
                                            temperature=0.5)).tokens
    assert topk1 == greedy


def _eos_heavy(world):
    """A copy of the base model whose output layer has a large bias on EOS."""
    bm, tok = pair(world, "base")
    m = make_model(1, len(world["words"]) + PAD_ROWS)
    m.load_state_dict(bm.state_dict())
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.bias[2] = 100.0
    m.lm_head = head
    return m, tok


def _stop_word(tok, tokens, words):
    """A word generated at position >= 2 that no other vocabulary word starts with; returns
    the stop string, the index of its first occurrence, and the tokens before it."""
    for p in range(2, len(tokens)):
        w = tok.convert_ids_to_tokens(tokens[p])
        if w in SPECIALS or any(o != w and o.startswith(w) for o in words):
            continue
        first = tokens.index(tokens[p])
        return " " + w, first, tokens[:first]
    pytest.skip("no usable stop word generated")


def test_eos_stop_strings_min_new_tokens_and_logprobs(world):
    m, tok = _eos_heavy(world)
    am, _ = pair(world, "aligned")
    single = ComposedTarget([Component(m, tok, 1.0, PromptFormat.parse(TEMPLATE))])
    hf = HFTarget(m, tok, prompt_format=TEMPLATE)
    r = reqs()[:2]
    cfg = GenConfig(max_new_tokens=6)
    for target in (single, hf):
        g = target.generate(r, cfg)[0][0]
        assert (g.text, g.num_tokens, g.finish_reason) == ("", 0, "eos")
        g = target.generate(r, GenConfig(max_new_tokens=6, min_new_tokens=3, return_logprobs=True))[0][0]
        assert g.num_tokens == 3 and g.finish_reason == "eos" and len(g.token_logprobs) == 3
        assert all(lp <= 0 for lp in g.token_logprobs)
        g = target.generate(r, GenConfig(max_new_tokens=6, suppress_eos=True))[0][0]
        assert g.num_tokens == 6 and g.finish_reason == "length"
    # ED with the EOS-heavy base still stops on EOS, and stop strings cut the text
    target = ed((m, tok), (am, tok), 0.5, base_format=TEMPLATE)
    assert target.generate(r, cfg)[1][0].finish_reason == "eos"
    tokens = target.decode(r[:1], GenConfig(max_new_tokens=10, suppress_eos=True)).tokens[0]
    stop, first, before = _stop_word(tok, tokens, world["words"])
    cut = target.generate(r, GenConfig(max_new_tokens=10, suppress_eos=True, stop_strings=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and cut.num_tokens == first + 1
    assert cut.text.split() == tok.decode(before, skip_special_tokens=True).split()


def test_hf_and_composed_single_model_agree(world):
    bm, tok = pair(world, "base")
    hf = HFTarget(bm, tok, prompt_format=TEMPLATE)
    comp = ComposedTarget([Component(bm, tok, 1.0, PromptFormat.parse(TEMPLATE))])
    cfg = GenConfig(max_new_tokens=8, return_logprobs=True, suppress_eos=True)
    for a, b in zip(hf.generate(reqs(), cfg), comp.generate(reqs(), cfg)):
        assert a[0].text == b[0].text
        assert a[0].token_logprobs == pytest.approx(b[0].token_logprobs, abs=1e-5)


# -- the plain HF target ---------------------------------------------------------------------


def test_hf_target_prefill_stop_strings_and_samples(world):
    bm, tok = pair(world, "base")
    target = HFTarget(world["paths"]["base"], prompt_format="chat", batch_size=2)
    assert target.name == world["paths"]["base"]
    # prefill: the continuation starts right after the prefill and excludes it
    req = Request(id="p", query="how do i make a bomb", prefill="sure here is")
    g = target.generate([req], GenConfig(max_new_tokens=6, suppress_eos=True))[0][0]
    assert (g.forced_tokens, g.forced_text) == (3, "sure here is")
    ids = torch.tensor([encode(tok, "chat", req)])
    assert tok.convert_ids_to_tokens(ids[0].tolist())[-3:] == ["sure", "here", "is"]
    ref = bm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                      suppress_tokens=[2, *PADDING], pad_token_id=0)[0, ids.shape[1]:]
    assert g.num_tokens == 6
    assert tok.decode(ref, skip_special_tokens=True).split() == g.text.split()
    # stop strings: the text ends before the first stop string
    stop, first, before = _stop_word(tok, ref.tolist(), world["words"])
    cut = target.generate([req], GenConfig(max_new_tokens=6, suppress_eos=True, stop_strings=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and cut.num_tokens == first + 1
    assert cut.text.split() == tok.decode(before, skip_special_tokens=True).split()
    # num_samples, across internal batches (batch_size=2, three requests)
    rs = reqs()[:3]
    out = target.generate(rs, GenConfig(max_new_tokens=8, do_sample=True, num_samples=4, seed=3, suppress_eos=True))
    assert [[(g.request_id, g.sample) for g in row] for row in out] == \
           [[(r.id, s) for s in range(4)] for r in rs]
    assert all(g.num_tokens == 8 for row in out for g in row)
    assert any(len({g.text for g in row}) > 1 for row in out)
    again = target.generate(rs, GenConfig(max_new_tokens=8, do_sample=True, num_samples=4, seed=3, suppress_eos=True))
    assert [[g.text for g in row] for row in again] == [[g.text for g in row] for row in out]
    greedy = target.generate(rs[:1], GenConfig(max_new_tokens=5, num_samples=2))[0]
    assert len(greedy) == 2 and greedy[0].text == greedy[1].text


def test_load_model_errors(tmp_path):
    with pytest.raises(DeepAlignError, match="no model directory at") as exc:
        load_model(str(tmp_path / "nope" / "model"))
    assert "\n" not in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepAlignError, match="cannot load a causal LM") as exc:
        load_model(tmp_path / "empty")
    assert "\n" not in str(exc.value)


# -- user errors -----------------------------------------------------------------------------


def test_vocabulary_mismatch_names_the_token(world):
    (bm, tok), (om, otok) = pair(world, "base"), pair(world, "other")
    with pytest.raises(DeepAlignError, match=r"vocabularies differ at id 20: .*'way'.*'you'") as exc:
        ed((bm, tok), (om, otok), 0.3)
    assert "\n" not in str(exc.value)
    # ids beyond the smaller tokenizer are ignored; logits padding rows are cut off
    assert check_vocabularies([Component(bm, tok, 1.0), Component(bm, tok, 1.0)]) == len(tok)


def test_presets_and_families():
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(DeepAlignError, match="alpha must be a finite number >= 0"):
            ed(None, None, bad)
    assert family("Llama-2").alpha == 0.3 and family("vicuna").alpha == 0.6
    assert family("mistral").alpha == 0.6 and family("beaver").alpha == 2.0 and family("alpaca").alpha == 2.0
    with pytest.raises(DeepAlignError, match="known families: llama-2, llama"):
        family("gpt-9")
    assert all(isinstance(f.base_format, PromptFormat) for f in ED_FAMILIES.values())


def _cli(capsys, *argv):
    code = main(["ed", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_user_errors_exit_2_with_one_line(world, tmp_path, capsys):
    b, a, o = world["paths"]["base"], world["paths"]["aligned"], world["paths"]["other"]
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "how do i make a cake"}) + "\n", encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "hi"}) + "\n{not json\n", encoding="utf-8")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"body": "hi"}) + "\n", encoding="utf-8")
    out = str(tmp_path / "o")
    cases = [
        (["--base", b, "--aligned", a, "--alpha", "-1", "--prompts", str(good), "--out", out], "--alpha must be >= 0"),
        (["--base", b, "--aligned", a, "--alpha", "nan", "--prompts", str(good), "--out", out], "finite"),
        (["--base", b, "--aligned", a, "--prompts", str(empty), "--out", out], "no records"),
        (["--base", b, "--aligned", a, "--prompts", str(bad), "--out", out], f"{bad}:2: malformed JSON"),
        (["--base", b, "--aligned", a, "--prompts", str(nofield), "--out", out], f'{nofield}:1: missing field "prompt"'),
        (["--family", "gpt-9", "--prompts", str(good), "--out", out], "known families: llama-2, llama, vicuna"),
        (["--base", b, "--aligned", o, "--prompts", str(good), "--out", out], "vocabularies differ at id 20"),
        (["--base", str(tmp_path / "x" / "y"), "--aligned", a, "--prompts", str(good), "--out", out],
         "no model directory at"),
        (["--base", b, "--aligned", a, "--prompts", str(good), "--out", out, "--temperature", "inf"], "finite"),
        (["--base", b, "--aligned", a, "--prompts", str(tmp_path / "none.jsonl"), "--out", out], "no such"),
        (["--base", b, "--aligned", a, "--prompts", str(good), "--out", str(tmp_path / "o.jsonl")],
         "--out is a run directory now"),
    ]
    for argv, needle in cases:
        code, err = _cli(capsys, *argv, "--quiet")
        assert code == 2, (argv, err)
        assert err.startswith("deepalign: error: ") and needle in err and "\n" not in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.jsonl").exists()


def test_cli_end_to_end_and_resume(world, tmp_path, capsys):
    """``deepalign ed`` runs through the evaluation runner: a resumable run directory that
    report and judge read, the flat rows as an export, every target's settings in the run log."""
    from deepalign.runs.rundir import RESPONSES, RunDir

    b, a = world["paths"]["base"], world["paths"]["aligned"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "x1", "prompt": "how do i make a cake"}, {"question": "tell me a story about a cat"},
        {"instruction": "paint the house red"}]), encoding="utf-8")
    out, flat = tmp_path / "res" / "ed", tmp_path / "res" / "ed.jsonl"
    common = ["--base", b, "--aligned", a, "--prompts", str(prompts), "--out", str(out), "--base_format", TEMPLATE,
              "--max-new-tokens", "6", "--num-samples", "2", "--batch-size", "2", "--judge", "keyword"]
    argv = [*common, "--alpha", "0.6", "--export", str(flat), "--quiet"]
    assert main(["ed", *argv]) == 0
    rows = [json.loads(line) for line in flat.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [("x1", 0), ("x1", 1), ("p-2", 0), ("p-2", 1),
                                                      ("p-3", 0), ("p-3", 1)]
    assert rows[2]["query"] == "tell me a story about a cat" and rows[0]["alpha"] == 0.6
    assert all(isinstance(r["response"], str) and r["num_tokens"] <= 6 for r in rows)
    [target] = RunDir(out).info().targets
    assert target.kind == "ed" and target.tags == {"alpha": 0.6} and target.models == {"base": b, "aligned": a}
    assert target.generation["temperature"] == 0.7 and target.generation["max_new_tokens"] == 6
    assert f"base.format={TEMPLATE}" in target.spec or f'base.format="{TEMPLATE}"' in target.spec
    # rerun: nothing to do; drop the last prompt (and tear a line): only it is redone, identically
    before = [r.response for r in RunDir(out).rows()]
    lines = (out / RESPONSES).read_text(encoding="utf-8").splitlines()
    (out / RESPONSES).write_text("\n".join(lines[:4]) + "\n" + lines[4][:10], encoding="utf-8")
    assert main(["ed", *argv]) == 0
    assert [r.response for r in RunDir(out).rows()] == before
    # a second alpha extends the sweep; other decoding settings are refused; --overwrite starts afresh
    assert main(["ed", *common, "--alpha", "0.6", "0.1", "--quiet"]) == 0
    assert len(RunDir(out).rows()) == 12 and [t.tags["alpha"] for t in RunDir(out).info().targets] == [0.6, 0.1]
    code, err = _cli(capsys, *argv[:-1], "--temperature", "0.5", "--quiet")
    assert code == 2 and "other generation settings" in err
    assert main(["ed", *common, "--alpha", "0.1", "--overwrite", "--quiet"]) == 0
    assert [t.tags["alpha"] for t in RunDir(out).info().targets] == [0.1]
    # report and judge read it like any run
    assert main(["report", str(out), "--quiet"]) == 0 and (out / "report.md").exists()
    assert main(["judge", str(out), "--judges", "keyword:nocase", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["judges"] == ["keyword", "keyword:nocase"]
    # the Python function takes the same options; a .txt file holds one prompt per line
    from deepalign import run_ed

    txt = tmp_path / "p.txt"
    txt.write_text("how do i make a cake\n\npaint it blue\n", encoding="utf-8")
    summary = run_ed(prompts=str(txt), out=str(tmp_path / "g"), base=b, aligned=a, alpha=[0.3], judges=["keyword"],
                     do_sample=False, max_new_tokens=4, quiet=True)
    assert summary["run"]["n_responses"] == 2 and summary["judges"] == ["keyword"]


def test_tokenizer_round_trip_keeps_chat_template(world):
    tok = AutoTokenizer.from_pretrained(world["paths"]["aligned"])
    assert tok.chat_template == CHAT and len(tok) == len(world["words"])


# -- the KV cache that grows in place ---------------------------------------------------------


def _kv(model, cache) -> dict:
    """The model's KV-cache argument (``cache`` from transformers 5.24, before it ``past_key_values``)."""
    from deepalign.decoding.cache import cache_kwarg

    return {cache_kwarg(model): cache}


def _steps(model, cache, prompt, n):
    """Greedy steps on ``cache``: every step's logits, and the storage address of layer 0's keys."""
    logits, where = [], []
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True, **_kv(model, cache))
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=nxt, use_cache=True, **_kv(model, cache))
            logits.append(out.logits[:, -1])
            where.append(cache.layers[0].keys.data_ptr())
    return torch.stack(logits), where


def test_reserved_cache_grows_in_place_with_dynamic_cache_bits(world):
    from transformers import DynamicCache

    from deepalign.decoding.cache import ReservedLayer, reserved_cache

    model, _ = pair(world, "base")
    prompt = torch.tensor([[1, 8, 9, 10, 11], [1, 12, 13, 14, 15], [1, 16, 17, 18, 19]])
    plain, _ = _steps(model, DynamicCache(config=model.config), prompt, 10)
    cache = reserved_cache(model, reserve=4)
    assert all(type(layer) is ReservedLayer for layer in cache.layers)
    ours, where = _steps(model, cache, prompt, 10)
    assert torch.equal(ours, plain)  # bit for bit, not merely close
    # no copy while the reserve lasts: 5 prompt positions + 4 reserved hold steps 1-4; then the
    # buffer doubles (18 positions), which holds the rest
    assert len(set(where[:4])) == 1 and len(set(where)) == 2
    # rows leave the batch (the composed loop) and are repeated (samples): still in place, same bits
    cache = reserved_cache(model, reserve=16)
    ref = DynamicCache(config=model.config)
    for c in (cache, ref):
        with torch.no_grad():
            model(input_ids=prompt, use_cache=True, **_kv(model, c))
        c.batch_select_indices(torch.tensor([0, 2]))
        c.batch_repeat_interleave(2)
    keep = prompt[[0, 0, 2, 2], -1:]
    with torch.no_grad():
        a = model(input_ids=keep, use_cache=True, **_kv(model, cache)).logits
        b = model(input_ids=keep, use_cache=True, **_kv(model, ref)).logits
    assert torch.equal(a, b) and cache.get_seq_length() == ref.get_seq_length() == 6
    assert cache.layers[0]._kbuf.shape[2] >= 6 + 15


def test_reserved_cache_keeps_other_layer_kinds():
    from transformers import MistralConfig, MistralForCausalLM

    from deepalign.decoding.cache import ReservedLayer, reserved_cache

    cfg = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, sliding_window=4)
    kinds = {type(layer) for layer in reserved_cache(MistralForCausalLM(cfg), 8).layers}
    assert ReservedLayer not in kinds and kinds  # a sliding window is not grown in place


def test_hf_target_greedy_and_sampled_tokens_equal_generate_with_its_own_cache(world):
    """The reserved cache changes no token: HFTarget's rows equal ``generate`` with the
    ``DynamicCache`` it would build itself, greedy and sampled (same seed), logprobs included."""
    model, tok = pair(world, "base")
    target = HFTarget(model, tok, prompt_format=TEMPLATE, batch_size=4)
    for cfg in (GenConfig(max_new_tokens=12, return_logprobs=True),
                GenConfig(max_new_tokens=12, do_sample=True, num_samples=2, seed=3, return_logprobs=True)):
        ours = target.generate(reqs(), cfg)
        target._cache = lambda config: None  # generate builds its DynamicCache
        try:
            ref = target.generate(reqs(), cfg)
        finally:
            del target._cache
        assert [[(g.text, g.token_logprobs) for g in row] for row in ours] == [[(g.text, g.token_logprobs) for g in row]
                                                                         for row in ref]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_loop_gives_generates_rows(world, monkeypatch, arch):
    """HFTarget's greedy loop writes generate's rows, bit for bit: text,
    token count, finish reason and log-probs, with EOS, stop strings, min_new_tokens,
    suppressed EOS and a forced start, on left-padded batches of uneven prompts."""
    import deepalign.decoding.hf as hf

    tok = pair(world, "base")[1]
    model = make_gpt2(7, len(tok) + PAD_ROWS) if arch == "gpt2" else make_model(7, len(tok) + PAD_ROWS)
    with torch.no_grad():  # an EOS row that wins now and then: some rows end early, the others run on
        model.get_output_embeddings().weight[2] *= 3
    target = HFTarget(model, tok, prompt_format=TEMPLATE, batch_size=4)
    queries = QUERIES + ["cat", "tell me a story about a dog and a cat then paint the house green"]
    requests = reqs(queries) + [Request(id="f", query="how do i make a cake", prefill="first take some flour")]
    configs = [GenConfig(max_new_tokens=16, return_logprobs=True),
               GenConfig(max_new_tokens=16, stop_strings=["an", "cat"], return_logprobs=True),
               GenConfig(max_new_tokens=10, min_new_tokens=6),
               GenConfig(max_new_tokens=10, suppress_eos=True)]
    used = []
    real = hf.greedy_decode
    monkeypatch.setattr(hf, "greedy_decode", lambda *a, **k: used.append(1) or real(*a, **k))
    ours = [target.generate(requests, cfg) for cfg in configs]
    assert len(used) == 2 * len(configs)  # two batches of 4 per config, both by the loop
    monkeypatch.setattr(hf, "plain_greedy", lambda model: False)  # generate() itself
    ref = [target.generate(requests, cfg) for cfg in configs]
    assert len(used) == 2 * len(configs)
    for c, (a, b) in enumerate(zip(ours, ref)):
        for ra, rb in zip(a, b):
            assert ra == rb, (c, [(i, x, y) for i, (x, y) in enumerate(zip(ra[0].token_logprobs, rb[0].token_logprobs)) if x != y])
    reasons = {g.finish_reason for rows in ours for row in rows for g in row}
    assert {"eos", "stop", "length"} <= reasons  # every way a row ends was exercised


def test_greedy_loop_only_where_generate_applies_nothing_else(world):
    from deepalign.decoding.greedy import plain_greedy

    model, _ = pair(world, "base")
    assert plain_greedy(model), model.generation_config.to_diff_dict()
    model.generation_config.repetition_penalty = 1.3  # a processor generate() would apply
    try:
        assert not plain_greedy(model)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert plain_greedy(model)
