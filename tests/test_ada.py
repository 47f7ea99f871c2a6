"""Any-Depth Alignment (decoding/ada.py, decoding/ada_probe.py): the header is the one the
model's own chat template puts after a query; a check is a side branch that leaves the answer
as it was; ADA-RK's lookahead is the model's own greedy text after the header; ADA-LP's
probability is the probe applied to the input norm's output at the header; a firing check
replaces the answer by the refusal; a probe that does not fit is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from deepalign.decoding.ada import AdaSettings, AdaTarget, header_ids, role_cut
from deepalign.decoding.base import GenConfig, Request
from deepalign.decoding.hf import HFTarget
from deepalign.errors import DeepAlignError
from realtok import family, tiny_model

QUERIES = ["how do i open the blue box ?", "what is two plus two ?", "tell me about the silver key ."]
PREFILL = "step one : take the silver key . step two : turn it twice ."


def _target(name: str, seed: int = 3, layers: int = 1):
    fam = family(name)
    model = tiny_model(fam.arch, len(fam.tokenizer), seed=seed)
    return HFTarget(model, fam.tokenizer, batch_size=8), fam.tokenizer


def _requests():
    return ([Request(f"q{i}", query=q) for i, q in enumerate(QUERIES)]
            + [Request(f"p{i}", query=q, prefill=PREFILL, prefill_tokens=k) for i, (q, k) in enumerate(zip(QUERIES, (3, 7, 12)))])


def _greedy(model, ids: list[int], n: int, eos: set[int], vocab: int) -> list[int]:
    """Plain greedy decoding, no cache: the reference for a lookahead."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1, :vocab]
            tok = int(logits.argmax())
            if tok in eos:
                break
            out.append(tok)
    return out


def test_header_is_the_templates_own():
    target, tok = _target("llama3-bpe")
    header = header_ids(target.encoder)
    text = tok.decode(header, skip_special_tokens=False)
    assert text == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    # ADA-LP reads the header up to its role token, as the authors' probe does
    assert tok.decode(header[: role_cut(tok, header)], skip_special_tokens=False) == \
        "<|eot_id|><|start_header_id|>assistant"
    world, wtok = _target("world")
    assert wtok.decode(header_ids(world.encoder), skip_special_tokens=False).strip() == "<assistant>"


@pytest.mark.parametrize("name", ["llama3-bpe", "mistral-tekken", "world"])
def test_checks_that_never_fire_leave_the_answer_unchanged(name):
    """The header and the lookahead are dropped from the cache after each check: with a refusal
    phrase the model never writes, every row equals the undefended model's, check after check."""
    target, _ = _target(name)
    config = GenConfig(max_new_tokens=24)
    plain = target.generate(_requests(), config)
    ada = AdaTarget(target, AdaSettings("rk", every=4, lookahead=5, refuse=("zzzqqq",)))
    defended = ada.generate(_requests(), config)
    for a, b in zip(plain, defended):
        assert (a[0].text, a[0].num_tokens, a[0].finish_reason, a[0].forced_tokens) == \
            (b[0].text, b[0].num_tokens, b[0].finish_reason, b[0].forced_tokens)
        assert b[0].defence["checks"], "every row was checked"


def test_rethinking_reads_the_models_own_greedy_text_after_the_header():
    target, tok = _target("llama3-bpe")
    config = GenConfig(max_new_tokens=16)
    reqs = _requests()
    ada = AdaTarget(target, AdaSettings("rk", every=5, lookahead=6, refuse=("zzzqqq",)))
    gens = ada.generate(reqs, config)
    header = header_ids(target.encoder)
    for req, (g,) in zip(reqs, gens):
        prompt_forced, forced = target.ids(req, 0)
        prompt = prompt_forced[: len(prompt_forced) - len(forced)]
        response = forced + list(g.token_ids)
        for depth, said in g.defence["checks"]:
            ref = _greedy(target.model, prompt + response[:depth] + header, 6, target.eos, len(tok))
            assert said == tok.decode(ref, skip_special_tokens=True), (req.id, depth)


def test_a_firing_check_replaces_the_answer_with_the_refusal():
    target, tok = _target("world")
    config = GenConfig(max_new_tokens=20)
    reqs = _requests()
    probe = AdaTarget(target, AdaSettings("rk", every=4, lookahead=4, refuse=("zzzqqq",))).generate(reqs, config)
    depth, said = probe[3][0].defence["checks"][0]
    word = said.split()[0]
    ada = AdaTarget(target, AdaSettings("rk", every=4, lookahead=4, refuse=(word,), refusal="no way ."))
    gens = ada.generate(reqs, config)
    fired = [g for (g,) in gens if "fired_at" in g.defence]
    assert gens[3][0].text == "no way ." and gens[3][0].defence["fired_at"] == depth == 4
    assert gens[3][0].defence["replaced"] == probe[3][0].text[: len(gens[3][0].defence["replaced"])]
    for (g,) in gens:
        if "fired_at" not in g.defence:
            assert all(not any(w == word for w in s.split()) for _, s in g.defence["checks"])
    assert fired


def test_probe_fit_load_and_its_probability(tmp_path, world_dir, base_model_dir):
    from deepalign.cli import main
    from deepalign.decoding.ada_probe import load_probe

    out = tmp_path / "probe"
    rc = main(["ada-probe", "--model", str(base_model_dir), "--world", str(world_dir), "--every", "4", "--limit", "10",
               "--harmful", "world:dev/harmful", "--harmless", "world:dev/benign", "--out", str(out), "--quiet"])
    assert rc == 0
    meta = json.loads((out / "probe.json").read_text())
    assert meta["every"] == 4 and set(meta["validation_accuracy"]) == {"0", "1"} and meta["data"]["states"]["harmful"] > 0
    target = HFTarget(str(base_model_dir), batch_size=8)
    ada = AdaTarget(target, AdaSettings("lp", every=4, probe=str(out), threshold=0.999999))
    probe = load_probe(out, target.model, target.tokenizer, header_ids(target.encoder))
    reqs = _requests()
    gens = ada.generate(reqs, GenConfig(max_new_tokens=12))
    header = header_ids(target.encoder)[: probe.cut]
    layer = target.model.model.layers[probe.layer]
    for req, (g,) in zip(reqs, gens):
        prompt_forced, forced = target.ids(req, 0)
        prompt = prompt_forced[: len(prompt_forced) - len(forced)]
        response = forced + list(g.token_ids)
        for depth, p in g.defence["checks"]:
            ids = torch.tensor([prompt + response[:depth] + header])
            with torch.no_grad():
                h = target.model(input_ids=ids, output_hidden_states=True).hidden_states[probe.layer]
                x = layer.input_layernorm(h)[0, -1].float()
            ref = torch.sigmoid(x @ probe.weight + probe.bias).item()
            assert abs(ref - p) < 1e-3, (req.id, depth)


def test_probe_that_does_not_fit_is_refused(tmp_path, world_dir, base_model_dir):
    from safetensors.torch import save_file

    from deepalign.cli import main
    from deepalign.decoding.ada_probe import load_probe

    out = tmp_path / "probe"
    assert main(["ada-probe", "--model", str(base_model_dir), "--world", str(world_dir), "--every", "4", "--layer", "1",
                 "--limit", "6", "--harmful", "world:dev/harmful", "--harmless", "world:dev/benign", "--out", str(out),
                 "--quiet"]) == 0
    llama, ltok = _target("llama3-bpe")
    with pytest.raises(DeepAlignError, match="hidden size|tokenizer"):
        load_probe(out, llama.model, ltok, header_ids(llama.encoder))
    target = HFTarget(str(base_model_dir))
    meta = json.loads((out / "probe.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "probe.json").write_text(json.dumps({**meta, "layer": 7}))
    save_file({"weight": torch.zeros(target.model.config.hidden_size), "bias": torch.zeros(1)},
              str(bad / "probe.safetensors"))
    with pytest.raises(DeepAlignError, match="layer 7"):
        load_probe(bad, target.model, target.tokenizer, header_ids(target.encoder))
    (bad / "probe.json").write_text(json.dumps({**meta, "tokenizer": "0" * 16}))
    with pytest.raises(DeepAlignError, match="another tokenizer"):
        load_probe(bad, target.model, target.tokenizer, header_ids(target.encoder))


def test_a_format_without_header_is_refused():
    fam = family("plain-sp")
    target = HFTarget(tiny_model(fam.arch, len(fam.tokenizer)), fam.tokenizer, prompt_format="raw")
    with pytest.raises(DeepAlignError, match="no assistant header"):
        AdaTarget(target, AdaSettings("rk"))


def test_a_header_the_tokenizer_cannot_encode_is_refused():
    fam = family("world")
    target = HFTarget(tiny_model(fam.arch, len(fam.tokenizer)), fam.tokenizer,
                      prompt_format="text:{query} zorblax answer :")
    with pytest.raises(DeepAlignError, match="cannot encode"):
        AdaTarget(target, AdaSettings("rk"))


@pytest.mark.parametrize("spec,message", [
    ("ada-lp:openai:m@http://localhost:1/v1:runs/p", "is a server"),
    ("ada-rk:runs/x,every=0", "out of range"),
    ("ada-lp:runs/x", "needs its probe"),
    ("ada-rk:runs/x,probe=runs/p", "takes no probe"),
    ("ada-lp:runs/x:runs/p,threshold=1.5", "out of range"),
    ("ada-rk:ed:base=runs/b", "a composed target (ed:) is not wrapped"),
])
def test_bad_specs(spec, message):
    from deepalign.decoding.spec import parse_target

    with pytest.raises(DeepAlignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_target(spec)


def test_an_hf_spec_and_a_probe_after_the_model():
    from deepalign.decoding.spec import parse_target

    parsed = parse_target("ada-lp:hf:runs/vanilla:runs/probe,every=8")
    assert parsed.model.path == "runs/vanilla" and parsed.ada.probe == "runs/probe" and parsed.ada.every == 8


def test_every_attack_runs_against_ada(tmp_path, world_dir, base_model_dir):
    """Prefill at any depth, completion, RAP, insertion and GCG: each attack reads the model and
    the defended target answers; every row records its checks."""
    from deepalign.cli import main

    out, probe = tmp_path / "run", tmp_path / "probe"
    assert main(["ada-probe", "--model", str(base_model_dir), "--world", str(world_dir), "--every", "4", "--layer", "1",
                 "--limit", "6", "--harmful", "world:dev/harmful", "--harmless", "world:dev/benign", "--out", str(probe),
                 "--quiet"]) == 0
    targets = [f"ada-rk:{base_model_dir},every=4,world={world_dir}", f"ada-lp:{base_model_dir}:{probe},every=4"]
    rc = main(["eval", "--target", *targets, "--world", str(world_dir), "--dataset", "world:harmful", "--limit", "2",
               "--attacks", "direct,prefill:3,prefill:9,completion,rap:5,insert:4,gcg:steps=1:width=8:topk=8",
               "--max_new_tokens", "10", "--judge", "oracle", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 7 * 2
    assert {r["attack"].split(":")[0] for r in rows} == {"direct", "prefill", "completion", "rap", "insert", "gcg"}
    for r in rows:
        d = r["meta"]["defence"]
        assert d["defence"] in ("ada-rk", "ada-lp")
        assert all(depth % 4 == 0 for depth, _ in d["checks"])


def test_sampling_under_ada_is_seeded_per_row_and_gives_every_sample():
    target, _ = _target("world")
    ada = AdaTarget(target, AdaSettings("rk", every=4, lookahead=3, refuse=("zzzqqq",)))
    config = GenConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_k=20, top_p=0.9, num_samples=3, seed=5)
    reqs = _requests()
    a, b = ada.generate(reqs, config), ada.generate(reqs[::-1], config)[::-1]
    assert all(len(per) == 3 for per in a)
    # a row's samples depend on its request and seed, not on the batch around it
    assert [[g.text for g in per] for per in a] == [[g.text for g in per] for per in b]
    assert len({g.text for per in a for g in per}) > len(reqs)  # the samples differ
