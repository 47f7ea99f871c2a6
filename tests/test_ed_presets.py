"""ED family presets reproduce the ED reference (github.com/ZHZisZZ/emulated-disalignment):
each model's prompt ids equal the reference's string prompts tokenised as the reference
tokenises them (``add_special_tokens=False``), the decoding and the response filters are the
reference's, in ``deepalign ed --family`` and in ``ed:family=`` targets alike."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mistral_common")
pytest.importorskip("google.protobuf")

from realtok import family as tok_family, tiny_model  # noqa: E402

from deepalign.decoding.base import GenConfig, Generation, Request  # noqa: E402
from deepalign.decoding.presets import (ED_BASE_TEMPLATE, ED_FAMILIES, MISTRAL_GUARDRAIL,  # noqa: E402
                                        VICUNA_TEMPLATE, ReferenceDecoding, ed, family)

QUERY = "How do I open the blue box?"


def reference_ids(tok, prompt: str) -> list[int]:
    """How the ED reference tokenises a prompt string."""
    return tok(prompt, add_special_tokens=False)["input_ids"]


def chat_text(tok, content: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Tiny base / aligned model directories per tokenizer family."""
    out = {}
    for name, arch in (("llama2-sp", "llama"), ("mistral-sp", "mistral")):
        tok = tok_family(name).tokenizer
        for role, seed in (("base", 1), ("aligned", 2)):
            d = tmp_path_factory.mktemp(f"{name}-{role}")
            tiny_model(arch, len(tok), seed).save_pretrained(d)
            tok.save_pretrained(d)
            out[(name, role)] = str(d)
    return out


def _prompts(target, query=QUERY):
    r = Request(id="q", query=query)
    return [c.ids(r)[0] for c in target.components]


def test_llama2_family_prompts_and_decoding(dirs):
    tok = tok_family("llama2-sp").tokenizer
    fam = family("llama-2")
    target = ed(dirs[("llama2-sp", "base")], dirs[("llama2-sp", "aligned")], fam.alpha, base_format=fam.base_format,
                aligned_format=fam.aligned_format)
    base_ids, aligned_ids = _prompts(target)
    assert base_ids == reference_ids(tok, ED_BASE_TEMPLATE.format(query=QUERY))  # no BOS, as the reference
    assert aligned_ids == reference_ids(tok, chat_text(tok, QUERY) + " ")  # "trailing space is necessary here"
    assert tok.convert_ids_to_tokens(aligned_ids)[-1] == "▁" and aligned_ids.count(tok.bos_token_id) == 1
    assert fam.generation() == {"do_sample": True, "temperature": 0.7, "top_k": 50, "max_new_tokens": 64,
                                "stop_strings": ["Query", "Response"], "suppress_eos": True}
    assert (fam.alpha, fam.num_samples, fam.min_response_tokens) == (0.3, 3, 8)


def test_mistral_and_vicuna_prompts(dirs):
    tok = tok_family("mistral-sp").tokenizer
    b, a = dirs[("mistral-sp", "base")], dirs[("mistral-sp", "aligned")]
    fam = family("mistral")
    _, aligned_ids = _prompts(ed(b, a, fam.alpha, base_format=fam.base_format, aligned_format=fam.aligned_format))
    # the guardrail goes inside the user turn: the v0.1 template has no system role
    assert aligned_ids == reference_ids(tok, chat_text(tok, MISTRAL_GUARDRAIL.format(query=QUERY)))
    assert fam.stop_strings == ("Query", "Responses")  # as the reference writes them
    fam = family("vicuna")
    _, aligned_ids = _prompts(ed(b, a, fam.alpha, base_format=fam.base_format, aligned_format=fam.aligned_format))
    assert aligned_ids == reference_ids(tok, VICUNA_TEMPLATE.format(query=QUERY))
    assert family("beaver").stop_strings == () and family("alpaca").alpha == 2.0
    assert family("plain").base is None and set(ED_FAMILIES) >= {"llama-2", "llama", "vicuna", "mistral", "plain"}


class _Scripted:
    """A fake composed target: each call returns the next batch of texts."""

    def __init__(self, tok, batches):
        self.batches, self.calls, self.name, self.generation = list(batches), [], "fake", {}
        self.decoder = type("D", (), {"tokenizer": tok})()

    def generate(self, requests, config):
        self.calls.append((len(requests), config.seed))
        texts = self.batches.pop(0)
        return [[Generation(r.id, s, texts[i][s], 3, "stop") for s in range(config.num_samples)]
                for i, r in enumerate(requests)]


def test_reference_filters_strip_trailing_text_and_resample_short_responses():
    tok = tok_family("llama2-sp").tokenizer
    long = "First you take the silver key and then you turn it twice to the left."
    inner = _Scripted(tok, [[[long + " #\n", "ok"]], [["no", long]]])
    target = ReferenceDecoding(inner, family("llama-2"))
    [[a, b]] = target.generate([Request(id="q", query=QUERY)], GenConfig(do_sample=True, num_samples=2, seed=5))
    # trailing characters go in the reference's order (" ", "#", then newline)
    assert a.text == long + " #" and b.text == long and b.sample == 1
    assert inner.calls == [(1, 5), (1, 5 + 7919)]  # the short one was drawn again, with a new seed


def test_family_targets_in_eval_specs(dirs, tmp_path):
    from deepalign.decoding.registry import make_target

    b, a = dirs[("llama2-sp", "base")], dirs[("llama2-sp", "aligned")]
    t = make_target(f"ed:family=llama-2,base={b},aligned={a}")
    assert isinstance(t, ReferenceDecoding) and t.generation["top_k"] == 50 and t.generation["suppress_eos"]
    assert [c.weight for c in t.components] == [1.3, -0.3]
    assert [c.prompt_format for c in t.components] == [family("llama-2").base_format, family("llama-2").aligned_format]
    plain = make_target(f"ed:family=llama-2,base={b},aligned={a},alpha=1,reference_decoding=false,aligned.format=raw")
    assert not isinstance(plain, ReferenceDecoding) and plain.components[1].prompt_format.kind == "raw"
    # one precedence rule: the family's reference decoding (3 samples per query) wins over the run's settings,
    # an explicit spec option wins over the family
    [gens] = t.generate([Request(id="q", query=QUERY)], GenConfig(max_new_tokens=4))
    assert len(gens) == 3 and all(isinstance(g.text, str) for g in gens)
    one = make_target(f"ed:family=llama-2,base={b},aligned={a},num_samples=1,top_k=5")
    assert one.generation["num_samples"] == 1 and one.generation["top_k"] == 5 and one.generation["temperature"] == 0.7


def test_ed_command_with_a_family(dirs, tmp_path):
    from deepalign.cli import main
    from deepalign.runs.rundir import RunDir

    b, a = dirs[("llama2-sp", "base")], dirs[("llama2-sp", "aligned")]
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{QUERY}\nHow do I water a fern?\n", encoding="utf-8")
    out, flat = tmp_path / "ed", tmp_path / "ed.jsonl"
    assert main(["ed", "--family", "llama-2", "--base", b, "--aligned", a, "--prompts", str(prompts), "--out", str(out),
                 "--export", str(flat), "--quiet"]) == 0
    rows = [json.loads(x) for x in flat.read_text().splitlines()]
    assert len(rows) == 2 * 3 and {r["alpha"] for r in rows} == {0.3}  # 3 samples per query, the family's alpha
    # the run log records what the target really used: the family's reference decoding over the run's flags
    [target] = RunDir(out).info().targets
    assert target.tags == {"alpha": 0.3} and target.models == {"base": b, "aligned": a}
    g = target.generation
    assert g["top_k"] == 50 and g["stop_strings"] == ["Query", "Response"] and g["num_samples"] == 3 and g["suppress_eos"]
    assert all(not r["response"].endswith((" ", "#", "\n")) for r in rows)
