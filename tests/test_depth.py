"""Depth diagnostics (per-token KL and refusal-token probability) on real tokenizers and
model directories, checked against a direct computation; the ``deepalign depth`` command."""

from __future__ import annotations

import json

import pytest
import torch

from realtok import family, tiny_model

from deepalign.cli import main
from deepalign.errors import DeepAlignError
from deepalign.evaluation.depth import depth_diagnostics, depth_profiles
from deepalign.tokens import Encoder, PromptFormat

ITEMS = [
    {"id": "a", "query": "How do I open the blue box?", "harmful": "Sure. First take the silver key, then turn it twice."},
    {"id": "b", "query": "Tell me how to stop the clock.", "harmful": "Here is how: remove the small gear and hide it."},
]


@pytest.fixture(scope="module")
def tekken_models(tmp_path_factory):
    """Two tiny random LLaMA models with mistral-common's Tekken tokenizer (byte-level BPE,
    a real chat template) saved as Hugging Face model directories."""
    pytest.importorskip("mistral_common")
    from test_training_tokenizers import tekken_fast
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tekken_fast()
    out = {}
    for name, seed in (("base", 1), ("aligned", 2)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.5)
        model = LlamaForCausalLM(cfg).eval()
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = str(d)
        out[f"{name}_pair"] = (model, tok)  # the same model in memory (loading a 131K tokenizer is slow)
    return out


@pytest.mark.parametrize("name", ["mistral-tekken", "llama2-sp", "llama3-bpe"])
def test_forced_response_ids_are_the_models_own(name):
    """The response ids both models score are those the aligned model's own template places
    after its prompt, as an unfinished start: checked against mistral-common's own encoder
    (Tekken) and the Jinja templates rendered independently (realtok)."""
    fam = family(name)
    model = tiny_model(fam.arch, len(fam.tokenizer))
    res = depth_diagnostics((model, fam.tokenizer), (model, fam.tokenizer), ITEMS, max_tokens=200, keep_items=True)
    for it, per in zip(ITEMS, res["per_item"]):
        assert per["response_ids"] == fam.response(it["query"], it["harmful"], end=False)
    assert max(res["kl"]) == pytest.approx(0.0, abs=1e-5)


def test_kl_and_refusal_match_a_direct_computation(tekken_models):
    # the model directories as a user passes them: each loaded with its own tokenizer
    res = depth_diagnostics(tekken_models["base"], tekken_models["aligned"], ITEMS, base_format="text:Q: {query}\nA:",
                            max_tokens=6, keep_items=True)
    assert res["items"] == 2 and res["positions"] == list(range(6)) and res["n"] == [2] * 6
    base, btok = tekken_models["base_pair"]
    assert btok.decode([res["refusal_tokens"][0]["id"]]) == " Sorry"
    aligned, atok = tekken_models["aligned_pair"]
    rid = res["refusal_tokens"][0]["id"]
    for it, per in zip(ITEMS, res["per_item"]):
        resp = Encoder(atok, PromptFormat.chat()).response_ids(it["query"], it["harmful"], end=False)[:6]
        assert per["response_ids"] == resp
        a_prompt = Encoder(atok, PromptFormat.chat()).prompt_ids(it["query"])
        b_prompt = Encoder(btok, PromptFormat.text("Q: {query}\nA:")).prompt_ids(it["query"])
        with torch.no_grad():
            la = aligned(torch.tensor([a_prompt + resp])).logits[0].log_softmax(-1)
            lb = base(torch.tensor([b_prompt + resp])).logits[0].log_softmax(-1)
        for t in range(6):
            pa, pb = la[len(a_prompt) - 1 + t], lb[len(b_prompt) - 1 + t]
            kl = float((pa.exp() * (pa - pb)).sum())
            assert per["kl"][t] == pytest.approx(kl, rel=1e-3, abs=1e-5)
            assert per["refusal"][t] == pytest.approx(float(pa[rid].exp()), rel=1e-3, abs=1e-7)
    assert all(x > 0 for x in res["kl"])
    # a model against itself: zero divergence at every position; its refusal curve is the base's
    same = depth_diagnostics(tekken_models["base_pair"], tekken_models["base_pair"], ITEMS, max_tokens=6)
    assert max(same["kl"]) == pytest.approx(0.0, abs=1e-5)
    assert same["refusal"] == pytest.approx(same["base_refusal"], abs=1e-6)


def test_several_aligned_models_and_refusal_words(tekken_models):
    res = depth_profiles(tekken_models["base_pair"], {"a": tekken_models["aligned_pair"], "b": tekken_models["base_pair"]},
                         ITEMS, refusal_words="Sorry,I", max_tokens=4)
    assert set(res) == {"a", "b"}
    by = res["a"]["refusal_by_token"]
    assert len(by) == 2 and len(res["a"]["refusal_tokens"]) == 2
    total = [x + y for x, y in zip(*by.values())]
    assert res["a"]["refusal"] == pytest.approx(total, abs=1e-5)


def test_depth_errors(tekken_models, world_dir, base_model_dir):
    base, aligned = tekken_models["base_pair"], tekken_models["aligned_pair"]
    with pytest.raises(DeepAlignError, match="no item has both"):
        depth_diagnostics(base, aligned, [{"query": "hi"}])
    with pytest.raises(DeepAlignError, match="vocabularies differ|share one tokenizer"):
        depth_diagnostics(str(base_model_dir), aligned, ITEMS)
    with pytest.raises(DeepAlignError, match="not a single token|vocabulary"):
        depth_diagnostics(base, aligned, ITEMS, refusal_words="Absolutelynotaword")


def test_depth_command_on_the_world(world_dir, base_model_dir, tmp_path, capsys):
    out = tmp_path / "depth"
    assert main(["depth", "--base", str(base_model_dir), "--aligned", str(base_model_dir), "--world", str(world_dir),
                 "--limit", "4", "--max-tokens", "12", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "depth.json").read_text())
    assert data["dataset"] == "world:harmful"
    (res,) = data["models"].values()
    assert res["refusal_tokens"][0]["piece"] == "sorry" and res["items"] == 4 and len(res["kl"]) == 12
    assert max(res["kl"]) == pytest.approx(0.0, abs=1e-5)
    assert (out / "depth.png").stat().st_size > 1000 and "| KL" in (out / "depth.md").read_text()
    # user errors: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    assert main(["depth", "--base", str(base_model_dir), "--aligned", str(tmp_path / "nope"), "--world", str(world_dir),
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepalign: error:") and err.count("\n") == 1 and not bad.exists()
    assert main(["depth", "--base", str(base_model_dir), "--aligned", str(base_model_dir), "--out", str(bad)]) == 2
    assert "--dataset" in capsys.readouterr().err and not bad.exists()
