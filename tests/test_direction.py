"""Refusal directions: the difference of means recomputed independently, orthogonalised weights
against W - r r^T W, hooks against orthogonalised models (llama, qwen2 and gemma, the last two
with tied embeddings), activation addition, the projection along harmful responses, and the
stages (direction, ablate, targets, depth) on the micro world."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from deepalign.cli import main
from deepalign.direction.residual import ResidualHooks, orthogonalize, residual_stream, unit
from deepalign.direction.select import find_direction
from deepalign.errors import DeepAlignError
from realtok import FAMILIES, family

# neutral placeholder queries: "harmful" and "harmless" are only labels here
HARMFUL = [f"please open the {c} box number {i} with the {k} key" for i, (c, k) in
           enumerate([(c, k) for c in ("blue", "red", "green", "amber") for k in ("silver", "iron", "brass")])]
HARMLESS = [f"what is {a} plus {b} ?" for a in ("two", "three", "four") for b in ("one", "five", "six", "nine")]


def _model(arch: str, vocab: int, layers: int = 3, tie: bool | None = None, seed: int = 0):
    from transformers import (GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
           "gemma": (GemmaConfig, GemmaForCausalLM)}[arch]
    kw = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=256)
    if arch == "gemma":
        kw["head_dim"] = 8
    if tie is not None:
        kw["tie_word_embeddings"] = tie
    model = cls[1](cls[0](**kw)).eval()
    with torch.no_grad():  # random biases make the bias handling observable (qwen2's attention has q/k/v biases)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _direction(tok_name: str = "llama3-bpe", arch: str = "llama", **kw):
    fam = family(tok_name)
    model = _model(arch, len(fam.tokenizer))
    d = find_direction(model, fam.tokenizer, HARMFUL, HARMLESS, n_train=8, n_val=3, filter_prompts=False,
                       kl_threshold=1e9, induce_refusal_threshold=-1e9, prune_layer_share=0.0, batch_size=5, **kw)
    return fam, model, d


@pytest.mark.parametrize("name", FAMILIES)
def test_after_query_counts_the_template_tokens_after_the_query(name):
    from deepalign.tokens import Encoder

    fam = family(name)
    enc = Encoder(fam.tokenizer)
    a, b = fam.prompt("how do i open the blue box"), fam.prompt("how do i open the silver key")
    shared = 0  # independent: what two prompts ending in different words share at their end
    while shared < min(len(a), len(b)) and a[-1 - shared] == b[-1 - shared]:
        shared += 1
    assert enc.after_query("how do i open the blue box") == shared
    assert shared >= 1  # every format here puts something between the query and the response


def test_direction_is_an_independent_difference_of_means_on_a_real_chat_template():
    fam, model, d = _direction()
    tok = fam.tokenizer
    # the post-instruction tokens are the template's tail after the query, tokenised on its own
    tail = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert d.info["post_instruction"]["ids"] == tok(tail, add_special_tokens=False)["input_ids"]
    n_post = d.info["post_instruction"]["count"]
    assert n_post == len(d.info["post_instruction"]["ids"]) and -n_post <= d.position <= -1
    assert len(d.info["candidates"]) == n_post * 3
    means = {}
    for key in ("harmful", "harmless"):
        rows = d.info["prompts"][key]["train"]
        assert len(rows) == 8 and not d.info["prompts"][key]["dropped_by_filter"]["train"]
        queries = {q: None for q in (HARMFUL if key == "harmful" else HARMLESS)}
        for row in rows:  # the recorded ids are the template's own tokenisation of one of the queries
            assert any(row["ids"] == fam.prompt(q) for q in queries)
        acts = []
        for row in rows:  # one prompt at a time, no padding, the model's own hidden_states
            with torch.no_grad():
                hs = model(torch.tensor([row["ids"]]), output_hidden_states=True).hidden_states
            acts.append(hs[d.layer][0, d.position].double())
        means[key] = torch.stack(acts).mean(0)
    diff = means["harmful"] - means["harmless"]
    assert torch.allclose(d.vector.double(), diff / diff.norm(), atol=1e-5)
    assert d.scale == pytest.approx(float(diff.norm()), rel=1e-5)
    assert d.vector.norm() == pytest.approx(1.0, abs=1e-6)


def test_orthogonalised_weights_are_w_minus_r_rT_w():
    model = _model("qwen2", 97, tie=True)
    stream = residual_stream(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    embed_before = stream.embed.weight.detach().clone()
    r = unit(torch.randn(16))
    P = torch.outer(r, r)
    info = orthogonalize(model, r)
    assert info["untied_output_layer"] and model.config.tie_word_embeddings is False
    assert torch.allclose(stream.embed.weight, embed_before - embed_before @ P, atol=1e-6)
    # the untied output layer keeps the original matrix
    assert torch.equal(model.get_output_embeddings().weight, embed_before)
    for i in range(len(stream.layers)):
        for name in (f"model.layers.{i}.self_attn.o_proj", f"model.layers.{i}.mlp.down_proj"):
            w = before[name + ".weight"]
            assert torch.allclose(dict(model.named_parameters())[name + ".weight"], w - P @ w, atol=1e-6)
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed == {"model.embed_tokens.weight"} | {f"model.layers.{i}.{m}.weight" for i in range(3)
                                                       for m in ("self_attn.o_proj", "mlp.down_proj")}


@pytest.mark.parametrize("arch, tie", [("llama", False), ("qwen2", True), ("gemma", None)])
def test_hooks_and_orthogonalised_model_give_the_same_logits(arch, tie, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(arch, 101, tie=tie)
    r = unit(torch.randn(16))
    ids = torch.randint(0, 101, (3, 9))
    baked = copy.deepcopy(model)
    orthogonalize(baked, r)
    baked.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad(), ResidualHooks(residual_stream(model), ablate=r):
        out = model(ids, output_hidden_states=True)
        hooked = out.logits
    with torch.no_grad():
        plain = model(ids).logits
        for other in (baked, reloaded):
            assert torch.allclose(other(ids).logits, hooked, atol=1e-5)
    assert not torch.allclose(plain, hooked, atol=1e-3)  # the ablation did something
    for h in out.hidden_states[:-1]:  # every layer's input, every position: nothing along r
        assert (h @ r).abs().max() < 1e-5


def test_shared_tied_matrix_is_orthogonalised_for_both_roles():
    model = _model("gemma", 101)
    e = model.get_input_embeddings().weight.detach().clone()
    r = unit(torch.randn(16))
    orthogonalize(model, r, tied="shared")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.allclose(model.get_output_embeddings().weight, e - torch.outer(e @ r, r), atol=1e-6)


def test_activation_addition_at_layer_0_is_adding_to_every_embedding():
    model = _model("llama", 53)
    v = torch.randn(16)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.get_input_embeddings().weight.add_(v)
    ids = torch.randint(0, 53, (2, 7))
    with torch.no_grad(), ResidualHooks(residual_stream(model), add={0: v}):
        added = model(ids).logits
    with torch.no_grad():
        assert torch.allclose(added, shifted(ids).logits, atol=1e-5)


def test_per_row_hooks_equal_one_direction_at_a_time():
    model = _model("llama", 53)
    stream = residual_stream(model)
    r1, r2 = unit(torch.randn(16)), unit(torch.randn(16))
    ids = torch.randint(0, 53, (2, 6))
    with torch.no_grad():
        with ResidualHooks(stream, ablate=torch.stack([r1, r2])):
            both = model(ids).logits
        for row, r in enumerate((r1, r2)):
            with ResidualHooks(stream, ablate=r):
                assert torch.allclose(model(ids[row: row + 1]).logits[0], both[row], atol=1e-5)


def test_selection_filters_as_the_reference_and_none_disables_a_filter():
    from deepalign.direction.select import _select

    def cands():
        return [{"position": -1, "layer": 1, "refusal_score": -5.0, "steering_score": -0.5, "kl": 0.05, "excluded": None},
                {"position": -1, "layer": 2, "refusal_score": -3.0, "steering_score": 0.5, "kl": 0.05, "excluded": None},
                {"position": -1, "layer": 0, "refusal_score": -9.0, "steering_score": 2.0, "kl": 0.5, "excluded": None},
                {"position": -1, "layer": 3, "refusal_score": None, "steering_score": None, "kl": None,
                 "excluded": "last layers"}]

    c = cands()
    assert _select(c, 0.1, 0.0)["layer"] == 2
    assert c[0]["excluded"].startswith("induced refusal score -0.5 < 0") and c[2]["excluded"].startswith("KL 0.5 > 0.1")
    assert _select(cands(), 0.1, None)["layer"] == 1
    assert _select(cands(), None, None)["layer"] == 0
    with pytest.raises(DeepAlignError, match="no candidate direction passes"):
        _select(cands(), 0.01, 0.0)
    # the error names the command line's spelling that turns the failing filter off
    only_induced = [c for c in cands() if c["layer"] in (1, 3)]
    with pytest.raises(DeepAlignError, match="relax --induce_refusal_threshold .*--induce_refusal_threshold none"):
        _select(only_induced, 0.1, 0.0)
    with pytest.raises(DeepAlignError, match="--kl_threshold none to turn that filter off"):
        _select(cands()[2:], 0.1, None)


def test_a_filter_is_turned_off_from_the_command_line_as_null_does_in_a_file(tmp_path):
    """``--induce_refusal_threshold none`` (``off``, ``null``) says what YAML ``null`` says; a
    value that is neither a number nor none is one line naming both."""
    from deepalign.cli import direction as direction_cli
    from deepalign.cli.parser import StageParser
    from deepalign.errors import DeepAlignError

    def parse(*argv):
        return StageParser("direction", direction_cli.OPTIONS).parse(list(argv))[0]

    opts = parse("--induce_refusal_threshold", "none", "--kl_threshold", "OFF")
    assert opts.induce_refusal_threshold is None and opts.kl_threshold is None
    assert parse("--induce_refusal_threshold=-2").induce_refusal_threshold == -2.0
    assert parse().induce_refusal_threshold == 0.0 and parse().kl_threshold == 0.1  # the reference's defaults
    cfg = tmp_path / "d.yaml"
    cfg.write_text("kl_threshold: null\ninduce_refusal_threshold: none\n")
    opts = parse("--config", str(cfg))
    assert opts.kl_threshold is None and opts.induce_refusal_threshold is None
    assert parse("--config", str(cfg), "--kl_threshold", "0.2").kl_threshold == 0.2  # a flag still beats the file
    with pytest.raises(DeepAlignError, match=r"invalid float value \(or none\): 'nul'"):
        parse("--kl_threshold", "nul")


def test_unknown_architecture_is_one_line():
    from realtok import tiny_model

    with pytest.raises(DeepAlignError, match="model type 'gpt2'.*not known"):
        residual_stream(tiny_model("gpt2", 50))


def test_refusal_tokens_are_the_first_response_token_of_each_word():
    from deepalign.direction.select import refusal_tokens
    from deepalign.tokens import Encoder

    fam = family("gemma-sp")
    enc = Encoder(fam.tokenizer)
    out = refusal_tokens(enc, ["I", "Sorry"], "hello there")
    assert [t["id"] for t in out] == [fam.response("hello there", w, end=False)[0] for w in ("I", "Sorry")]
    with pytest.raises(DeepAlignError, match="not one known token"):
        refusal_tokens(enc, ["Zyxwvut"], "hello there")


def test_projection_is_the_direction_times_the_activation_after_k_forced_tokens():
    from deepalign.evaluation.projection import projection_profiles

    fam, model, d = _direction()
    item = ("please open the blue box", "take the silver key and turn it twice")
    res = projection_profiles({"m": (model, fam.tokenizer)}, {"m": d}, [item], max_tokens=5)["m"]
    prompt = fam.prompt(item[0])
    resp = fam.response(item[0], item[1], end=False)[:5]
    with torch.no_grad():
        hs = model(torch.tensor([prompt + resp]), output_hidden_states=True).hidden_states[d.layer][0]
    expect = [float(hs[len(prompt) - 1 + k] @ d.vector) for k in range(len(resp))]
    assert res["projection"] == pytest.approx(expect, abs=1e-4) and res["n"] == [1] * len(resp)
    assert res["layer"] == d.layer and res["harmful_mean"] is not None


def test_harmless_kl_is_the_kl_of_the_first_response_token_under_ablation():
    from deepalign.direction.select import harmless_kl

    fam, model, d = _direction()
    res = harmless_kl(model, d, HARMLESS[:3], tokenizer=fam.tokenizer)
    expect = []
    for q in HARMLESS[:3]:
        ids = torch.tensor([fam.prompt(q)])
        with torch.no_grad():
            p = model(ids).logits[0, -1].double().log_softmax(-1)
            with ResidualHooks(residual_stream(model), ablate=d.vector):
                a = model(ids).logits[0, -1].double().log_softmax(-1)
        # the reference's kl_div_fn: probabilities with epsilon 1e-6 inside the logs
        pp, qq = p.exp(), a.exp()
        expect.append(float((pp * ((pp + 1e-6).log() - (qq + 1e-6).log())).sum()))
    assert res["per_query"] == pytest.approx(expect, rel=1e-3, abs=1e-6) and res["n"] == 3
    assert res["kl"] == pytest.approx(sum(expect) / 3, rel=1e-3, abs=1e-6) and res["kl"] > 0


# -- the stages on the micro world ------------------------------------------------------------

RELAX = ["--prune_layer_share", "0", "--kl_threshold", "none", "--induce_refusal_threshold", "none", "--filter_prompts",
         "false", "--n_val", "8"]


@pytest.fixture(scope="module")
def made(world_dir, base_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("direction")
    w, b = str(world_dir), str(base_model_dir)
    assert main(["direction", "--model", b, "--world", w, "--out", str(root / "d"), "--quiet", *RELAX]) == 0
    return root, w, b


def test_direction_stage_writes_a_complete_deterministic_record(made):
    from safetensors.torch import load_file

    from deepalign.direction.store import load_direction

    root, w, b = made
    d = load_direction(root / "d")
    meta = json.loads((root / "d" / "direction.json").read_text())
    assert meta["post_instruction"]["pieces"] == ["<assistant>"] and d.position == -1
    assert [t["piece"] for t in meta["refusal_tokens"]] == ["sorry", "i"]  # the world manifest's refusal openers
    assert meta["model"]["name"] == b and meta["layer"] == d.layer < 2
    assert {c["excluded"] for c in meta["candidates"] if c["layer"] == 0} == {"no difference"}
    assert len(meta["prompts"]["harmful"]["val"]) == 8 and meta["prompts"]["harmful"]["dataset"] == "world:harmful"
    assert meta["settings"]["kl_threshold"] is None and meta["settings"]["induce_refusal_threshold"] is None
    tensors = load_file(root / "d" / "direction.safetensors")
    assert tensors["mean_diffs"].shape == (1, 2, d.hidden_size)
    assert main(["direction", "--model", b, "--world", w, "--out", str(root / "d2"), "--quiet", *RELAX]) == 0
    assert (root / "d2" / "direction.safetensors").read_bytes() == (root / "d" / "direction.safetensors").read_bytes()
    assert main(["direction", "--model", b, "--world", w, "--out", str(root / "d3"), "--quiet", "--seed", "1",
                 *RELAX]) == 0
    other = json.loads((root / "d3" / "direction.json").read_text())
    assert other["prompts"]["harmful"]["val"] != meta["prompts"]["harmful"]["val"]


def test_ablated_model_directory_matches_the_ablate_target(made):
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.registry import make_target

    root, w, b = made
    assert main(["ablate", "--model", b, "--direction", str(root / "d"), "--out", str(root / "m"), "--quiet"]) == 0
    # its model card says what it holds and how to evaluate it
    record = json.loads((root / "m" / "deepalign_ablation.json").read_text())
    meta = json.loads((root / "d" / "direction.json").read_text())
    assert (record["model"], record["layer"], record["position"]) == (b, meta["layer"], meta["position"])
    card = (root / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "base_model:" not in card  # a local path
    assert f"| source model | `{b}` |" in card and f"| direction | `{root / 'd'}` |" in card
    assert f"| layer | {meta['layer']} |" in card and f"| position | {meta['position']} |" in card
    evaluate = next(line for line in card.splitlines() if line.startswith("deepalign eval "))
    import shlex

    argv = shlex.split(evaluate)
    assert argv[argv.index("--target") + 1] == f"hf:{root / 'm'}"
    assert f"ablate:model={b},direction={root / 'd'}" in argv
    hooked = make_target(f"ablate:model={b},direction={root / 'd'}")
    baked = make_target(f"hf:{root / 'm'}")
    reqs = [Request(id=f"r{i}", query=q) for i, q in enumerate(["how do i hex the moonwell ?", "what is 2 plus 3 ?"])]
    cfg = GenConfig(max_new_tokens=6)
    assert [g[0].text for g in hooked.generate(reqs, cfg)] == [g[0].text for g in baked.generate(reqs, cfg)]
    ids = torch.tensor([hooked.encoder.prompt_ids("how do i hex the moonwell ?")])
    with torch.no_grad():
        assert torch.allclose(hooked.model(ids).logits, baked.model(ids).logits, atol=1e-5)
    # the direction belongs to the base model, not to the ablated copy
    with pytest.raises(DeepAlignError, match="was computed from model"):
        make_target(f"ablate:model={root / 'm'},direction={root / 'd'}")
    assert make_target(f"ablate:model={root / 'm'},direction={root / 'd'},allow_foreign=true") is not None


def test_actadd_target_and_ablated_component_of_a_composition(made):
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.registry import make_target

    root, w, b = made
    d = root / "d"
    plain, added = make_target(f"hf:{b}"), make_target(f"actadd:model={b},direction={d},coeff=3")
    ids = torch.tensor([plain.encoder.prompt_ids("what is 2 plus 3 ?")])
    with torch.no_grad():
        assert not torch.allclose(plain.model(ids).logits, added.model(ids).logits, atol=1e-4)
    ed = make_target(f"ed:base={b},aligned={b},alpha=0.5,aligned.ablate={d}")
    assert len(ed.components[1].model._forward_hooks) == 0  # hooks sit on the residual writers
    stream = residual_stream(ed.components[1].model)
    assert stream.embed._forward_hooks and not residual_stream(ed.components[0].model).embed._forward_hooks
    out = ed.generate([Request(id="a", query="how do i hex the moonwell ?")], GenConfig(max_new_tokens=3))
    assert len(out) == 1
    with pytest.raises(DeepAlignError, match="coeff= goes with actadd="):
        make_target(f"ed:base={b},aligned={b},alpha=0.5,aligned.coeff=2")


def test_depth_with_directions_writes_the_projection(made, tmp_path):
    root, w, b = made
    out = tmp_path / "depth"
    assert main(["depth", "--base", b, "--aligned", b, "--direction", str(root / "d"), "--world", w, "--out", str(out),
                 "--limit", "3", "--max_tokens", "6", "--quiet"]) == 0
    proj = json.loads((out / "projection.json").read_text())["models"]
    (label,) = proj
    assert len(proj[label]["projection"]) == 6 and proj[label]["n"][0] == 3
    assert (out / "projection.png").stat().st_size > 0 and "projection.png" in (out / "depth.md").read_text()


def test_refusal_words_as_one_comma_separated_string_are_words_not_letters():
    *_, as_string = _direction(refusal_words="I,Sorry")
    *_, as_list = _direction(refusal_words=["I", "Sorry"])
    assert [t["word"] for t in as_string.info["refusal_tokens"]] == ["I", "Sorry"]
    assert as_string.info["refusal_tokens"] == as_list.info["refusal_tokens"]


def test_direction_and_ablate_never_replace_what_they_did_not_write(made, capsys):
    """Both commands write their --out whole: they may replace an earlier output of their own
    (ablate, as train, only with --overwrite), never a model directory or a directory of other
    files."""
    root, w, b = made
    model_files = sorted(p.name for p in Path(b).iterdir())
    other = root / "other"
    other.mkdir(exist_ok=True)
    (other / "keep.txt").write_text("mine")
    ablate = ["ablate", "--model", b, "--direction", str(root / "d"), "--quiet", "--out"]
    direction = ["direction", "--model", b, "--world", w, "--quiet", *RELAX, "--out"]
    for argv, message in ((ablate + [b], "is the model being ablated"), (ablate + [str(other)], "holds 'keep.txt'"),
                          (direction + [b], "holds no earlier output of this command"),
                          (direction + [str(other)], "holds 'keep.txt'")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in Path(b).iterdir()) == model_files and (other / "keep.txt").read_text() == "mine"
    assert main(ablate + [str(root / "m2")]) == 0
    written = (root / "m2" / "model.safetensors").stat().st_mtime_ns
    assert main(ablate + [str(root / "m2")]) == 2  # its own output: replaced only with --overwrite
    err = capsys.readouterr().err
    assert f"{root / 'm2'} already holds an ablated model; pass --overwrite to ablate it again" in err
    assert err.count("\n") == 1 and (root / "m2" / "model.safetensors").stat().st_mtime_ns == written
    assert main(ablate[:-1] + ["--overwrite", "--out", str(root / "m2")]) == 0
    assert main(direction + [str(root / "d")]) == 0


# -- the reference's refusal words per model family (andyrdt/refusal_direction) -------------------

@pytest.mark.parametrize("tok_name, arch, words", [
    # pipeline/model_utils/qwen_model.py: QWEN_REFUSAL_TOKS = [40, 2121]  # ['I', 'As']
    ("chatml-bpe", "qwen2", ["I", "As"]),
    # llama3_model.py: LLAMA3_REFUSAL_TOKS = [40]  # 'I'
    ("llama3-bpe", "llama", ["I"]),
    # llama2_model.py: LLAMA2_REFUSAL_TOKS = [306]  # 'I'
    ("llama2-sp", "llama", ["I"]),
    # gemma_model.py: GEMMA_REFUSAL_TOKS = [235285]  # ['I']
    ("gemma-sp", "gemma", ["I"]),
])
def test_default_refusal_words_are_the_references_per_family(tok_name, arch, words):
    fam, _, d = _direction(tok_name, arch)
    got = d.info["refusal_tokens"]
    assert [t["word"] for t in got] == words
    # each is the first response token of the word in the family's own chat template
    assert [t["id"] for t in got] == [fam.response(HARMFUL[0], w, end=False)[0] for w in words]


def test_reference_refusal_words_follow_the_model_type():
    from types import SimpleNamespace

    from deepalign.direction.select import reference_refusal_words

    def of(model_type):
        return reference_refusal_words(SimpleNamespace(config=SimpleNamespace(model_type=model_type)))

    for t in ("qwen", "qwen2", "qwen2_moe", "qwen3"):
        assert of(t) == ["I", "As"]
    for t in ("llama", "gemma", "gemma2", "mistral", "gpt2"):
        assert of(t) == ["I"]


def test_direction_cli_without_refusal_words_takes_the_family_default(tmp_path):
    fam = family("chatml-bpe")
    model = _model("qwen2", len(fam.tokenizer))
    model.save_pretrained(tmp_path / "m")
    fam.tokenizer.save_pretrained(tmp_path / "m")
    for name, queries in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in queries))
    assert main(["direction", "--model", str(tmp_path / "m"), "--harmful", str(tmp_path / "harmful.jsonl"),
                 "--harmless", str(tmp_path / "harmless.jsonl"), "--out", str(tmp_path / "d"), "--quiet",
                 "--n_train", "8", "--n_val", "3", *RELAX[:6], "--filter_prompts", "false", "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "d" / "direction.json").read_text())
    assert [t["word"] for t in meta["refusal_tokens"]] == ["I", "As"]
