"""Depth diagnostics (per-token KL and refusal-token probability) on real tokenizers and
model directories, checked against a direct computation; the ``deepalign depth`` command."""

from __future__ import annotations

import json

import pytest
import torch

from deepalign.cli import main
from deepalign.decoding.prompts import PromptFormat
from deepalign.errors import DeepAlignError
from deepalign.evaluation.depth import depth_diagnostics, depth_profiles, response_ids

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


def test_response_ids_follow_the_chat_template_and_text_formats():
    pytest.importorskip("mistral_common")
    from test_training_tokenizers import tekken_fast

    tok = tekken_fast()
    q, r = ITEMS[0]["query"], ITEMS[0]["harmful"]
    ids = response_ids(tok, PromptFormat.chat(), q, r)
    assert tok.decode(ids) == r  # "[INST]q[/INST]" then the response, no end-of-turn
    assert tok.eos_token_id not in ids
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    full = tok(tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                                       tokenize=False), add_special_tokens=False)["input_ids"]
    assert full[: len(prompt) + len(ids)] == prompt + ids
    # a text template: the response follows the prompt after one space, as the model would read it
    ids = response_ids(tok, PromptFormat.text("Question: {query}\nAnswer:"), q, r)
    assert tok.decode(ids).strip() == r


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
        resp = response_ids(atok, PromptFormat.chat(), it["query"], it["harmful"])[:6]
        a_prompt = PromptFormat.chat().encode(atok, _req(it))
        b_prompt = PromptFormat.text("Q: {query}\nA:").encode(btok, _req(it))
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


def _req(item):
    from deepalign.decoding.base import Request

    return Request(id=item["id"], query=item["query"])


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
