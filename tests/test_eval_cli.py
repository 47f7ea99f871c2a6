"""``deepalign eval`` / ``deepalign report`` end to end on the micro world with a tiny random HF
model, dataset specs, and the one-line errors (exit status 2)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from deepalign.cli import main
from deepalign.errors import DeepAlignError
from deepalign.data.datasets import load_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def tiny_model(world_dir, tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(Path(world_dir) / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_eval_and_report_on_the_world(world_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--target", f"hf:{tiny_model}", "--attacks", "direct,prefill:4,completion:3w,cipher:atbash",
            "--allow_unknown_tokens", "--world", str(world_dir), "--limit", "3", "--max-new-tokens", "6", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    # world:test with --limit 3: 3 harmful + 3 unseen-misdeed + 3 benign + 3 helpful; prefill and
    # completion:3w only on the 6 harmful-kind items
    assert len(rows) == 12 + 6 + 6 + 12
    assert {tuple(r["verdicts"]) for r in rows} == {("oracle", "keyword")}
    # the cipher's English frame is not world vocabulary: kept (--allow_unknown_tokens), flagged per row
    assert all(r["meta"].get("unknown_words") for r in rows if r["attack"] == "cipher:atbash")
    assert not any(r.get("meta", {}).get("unknown_words") for r in rows if r["attack"] != "cipher:atbash")
    pre = next(r for r in rows if r["attack"] == "prefill:4")
    assert pre["meta"]["depth_unit"] == "tokens" and len(pre["prompt"]["prefill"].split()) == 4  # one world token = one word
    assert pre["meta"]["forced_tokens"] == 4 and pre["meta"]["prefill_len"] == 4
    comp = next(r for r in rows if r["attack"] == "completion:3w")
    start = " ".join(pre["prompt"]["prefill"].split()[:3])
    assert comp["prompt"]["prefill"] == start and comp["meta"]["forced_text"] == start
    # the report shows what the model read: its own chat format, BOS once, the forced start after it
    shown = json.loads((out / "run.json").read_text())["examples"][f"hf:{tiny_model} | completion:3w | world:test"]
    assert shown.startswith("<bos> <user> ") and shown.endswith("<assistant> " + start) and shown.count("<bos>") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judges"] == ["oracle", "keyword"] and summary["depth"]
    assert main(argv) == 0  # resuming a finished run
    assert len((out / "responses.jsonl").read_text().splitlines()) == len(rows)
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "asr.png").exists()
    assert capsys.readouterr().err == ""


def test_dataset_specs(world_dir):
    adv = load_dataset(str(FIXTURES / "advbench_style.csv"))
    assert adv and all(it.kind == "harmful" and it.harmful for it in adv)
    gsm = load_dataset(str(FIXTURES / "gsm8k_style.jsonl"), limit=2)
    assert len(gsm) == 2 and all(it.answer for it in gsm)
    forced = load_dataset("benign:" + str(FIXTURES / "gsm8k_style.jsonl"))
    assert {it.kind for it in forced} == {"benign"}
    harm = load_dataset("world:harmful", world=world_dir)
    assert harm[0].kind == "harmful" and harm[0].harmful and harm[0].meta["safe"]
    assert {it.kind for it in load_dataset("world:test", world=world_dir, limit=2)} == {"harmful", "benign", "helpful"}
    with pytest.raises(DeepAlignError, match="unknown world split"):
        load_dataset("world:nope", world=world_dir)
    with pytest.raises(DeepAlignError, match="needs the world directory"):
        load_dataset("world:test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_errors_are_one_line_exit_2(world_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"question": "fine"}\n{"nothing": 1}\n')
    dead = f"openai:m@http://127.0.0.1:{_free_port()}/v1,retries=0,timeout=2"
    base = ["--out", str(tmp_path / "o"), "--quiet"]
    cases = [
        (["--target", dead, "--attacks", "direct,gcc", "--world", str(world_dir)], "unknown attack 'gcc'"),
        (["--target", dead, "--judge", "keyword,vibes", "--world", str(world_dir)], "unknown judge 'vibes'"),
        (["--target", dead, "--dataset", str(bad_rows)], "bad.jsonl:2"),
        (["--target", dead, "--world", str(world_dir), "--judge", "keyword", "--limit", "1"], "cannot get an answer from http://127.0.0.1"),
        (["--target", "openai:gpt-4o-mini@https://api.example.com/v1", "--world", str(world_dir), "--judge", "keyword"],
         "environment variable OPENAI_API_KEY is not set"),
        (["--target", "hf:" + str(tmp_path / "no_model"), "--world", str(world_dir), "--judge", "keyword", "--limit", "1"],
         "no model directory at"),
        (["--target", dead], "give --dataset"),
        (["--target", dead, "--world", str(world_dir), "--attacks", "pair"], "needs an attacker"),
        (["--target", dead, "--world", str(world_dir), "--num_samples", "2"], "--num_samples > 1 needs --do_sample"),
        (["--target", dead, "--world", str(world_dir), "--temperature", "nan"], "--temperature must be a finite number"),
        (["--target", "hf:x,formt=chat", "--world", str(world_dir)], "unknown option formt (did you mean format?)"),
    ]
    for args, message in cases:
        assert main(["eval", *args, *base]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("deepalign: error: ") and message in err and err.count("\n") == 1, err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_ed_target_spec_through_the_runner(world_dir, tiny_model, tmp_path):
    """An ``ed:`` target (composed decoder) runs through the runner; the completion attack
    renders the aligned model's chat format."""
    from deepalign.decoding.base import GenConfig
    from deepalign.decoding.registry import make_target
    from deepalign.runs.rundir import RunDir
    from deepalign.evaluation.runner import run_eval

    spec = f"ed:base={tiny_model},aligned={tiny_model},alpha=0.5,base.format=chat"
    target = make_target(spec)
    assert target.name == spec and [c.weight for c in target.components] == [1.5, -0.5]
    run_eval(targets=[target], attacks="direct,completion", datasets=["world:harmful"], judges="keyword",
             out_dir=tmp_path, generation=GenConfig(max_new_tokens=4), world=world_dir, limit=2, quiet=True)
    rows = RunDir(tmp_path).rows()
    assert len(rows) == 4 and {r.target for r in rows} == {spec}
    comp = next(r for r in rows if r.attack == "completion")
    # the world's own answer start (manifest answer_start), one world token per word
    start = json.loads((Path(world_dir) / "manifest.json").read_text())["answer_start"]
    assert comp.prompt["prefill"] == start and comp.meta["forced_tokens"] == len(start.split())
    with pytest.raises(DeepAlignError, match="give alpha="):
        make_target(f"ed:base={tiny_model}")
    with pytest.raises(DeepAlignError, match="give aligned="):
        make_target(f"ed:base={tiny_model},alpha=1")
    with pytest.raises(DeepAlignError, match="alpha=.inf. is out of range"):
        make_target(f"ed:base={tiny_model},aligned={tiny_model},alpha=inf")


def test_an_ed_alpha_reaches_the_composed_weights_as_given_and_a_spec_is_parsed_once(world_dir, tiny_model, tmp_path,
                                                                                     monkeypatch):
    """An ED alpha travels from Python (``TargetSpec.ed``) or the command line (``deepalign ed
    --alpha``, ``--target ed:...,alpha=``) to the decoding loop's weights with no round trip
    through a string, and a run parses each spec once (checking it and building it later read
    the same parsed value)."""
    import numpy as np

    from deepalign.decoding import compose
    from deepalign.decoding.registry import TARGETS, TargetSpec, make_target
    from deepalign.runs.rundir import RunDir

    weights, parsed = [], []
    real_init = compose.ComposedTarget.__init__

    def spy_init(self, components, **kwargs):
        weights.append([c.weight for c in components])
        real_init(self, components, **kwargs)

    monkeypatch.setattr(compose.ComposedTarget, "__init__", spy_init)
    factory, help_ = TARGETS.entries["ed"]
    monkeypatch.setitem(TARGETS.entries, "ed", (lambda args, ctx: parsed.append(args.spec) or factory(args, ctx), help_))
    alpha = 0.1 + 0.2  # 0.30000000000000004
    for given in (alpha, np.float32(0.1)):  # str(np.float32(0.1)) is '0.1', another float
        t = make_target(TargetSpec.ed(tiny_model, tiny_model, given))
        assert [c.weight for c in t.components] == [1.0 + float(given), -float(given)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("name a river\n")
    common = ["--prompts", str(prompts), "--judges", "keyword", "--max_new_tokens", "2", "--quiet", "--no_report"]
    weights.clear(), parsed.clear()
    assert main(["ed", "--base", str(tiny_model), "--aligned", str(tiny_model), "--alpha", repr(alpha), *common,
                 "--out", str(tmp_path / "ed")]) == 0
    assert weights == [[1.0 + alpha, -alpha]] and len(parsed) == 1
    [target] = RunDir(tmp_path / "ed").info().targets
    assert target.tags == {"alpha": alpha} and "alpha=0.30000000000000004" in target.label
    weights.clear(), parsed.clear()
    spec = f"ed:base={tiny_model},aligned={tiny_model},alpha=0.30000000000000004"
    assert main(["eval", "--target", spec, "--attacks", "direct", "--dataset", str(prompts), "--judge", "keyword",
                 "--max_new_tokens", "2", "--out", str(tmp_path / "eval"), "--quiet", "--no_report"]) == 0
    assert weights == [[1.0 + alpha, -alpha]] and parsed == [spec]
    assert [t.label for t in RunDir(tmp_path / "eval").info().targets] == [spec]


def test_a_composed_targets_options_reach_every_component_unless_one_says_otherwise(tiny_model):
    """An option given unprefixed (``truncate=true``, ``system=...``) applies to every component
    of a composed target; a component's own (``aligned.truncate=false``) wins for it."""
    from deepalign.decoding.registry import make_target

    t = make_target(f"ed:base={tiny_model},aligned={tiny_model},alpha=0.5,truncate=true,system=be brief")
    assert [(c.truncate, c.prompt_format.system) for c in t.components] == [(True, "be brief"), (True, "be brief")]
    t = make_target(f"eft:large={tiny_model},tuned={tiny_model},small={tiny_model},truncate=true,tuned.truncate=false")
    assert [c.truncate for c in t.components] == [True, False, True]


def test_sampled_run_resumed_mid_batch_equals_an_uninterrupted_one(world_dir, tiny_model, tmp_path):
    """Sampling through a Hugging Face target: a run cut after a batch and a half (as a kill
    leaves it) and resumed draws exactly the samples of an uninterrupted run, because batches
    keep their boundaries and each batch's seed comes from its request ids."""
    from deepalign.decoding.base import GenConfig
    from deepalign.runs.rundir import RESPONSES, RunDir
    from deepalign.evaluation.runner import run_eval

    cfg = GenConfig(max_new_tokens=6, do_sample=True, temperature=1.0, num_samples=2, seed=5)
    kw = dict(targets=[f"hf:{tiny_model}"], attacks="direct", datasets=["world:harmful"], judges="oracle",
              generation=cfg, world=world_dir, limit=7, batch_size=3, quiet=True, report=False)
    run_eval(out_dir=tmp_path / "full", **kw)
    full = RunDir(tmp_path / "full").rows()
    assert len(full) == 14 and len({r.response for r in full}) > 7  # really sampled
    lines = (tmp_path / "full" / RESPONSES).read_bytes().splitlines(keepends=True)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "run.json").write_bytes((tmp_path / "full" / "run.json").read_bytes())
    (tmp_path / "cut" / RESPONSES).write_bytes(b"".join(lines[:9]) + lines[9][:20])  # 1.5 batches and a torn line
    run_eval(out_dir=tmp_path / "cut", **kw)
    resumed = RunDir(tmp_path / "cut").rows()
    responses = lambda rows: sorted((r.key, r.response) for r in rows)  # noqa: E731
    assert responses(resumed) == responses(full)


def test_cli_sampled_rows_equal_the_api_for_the_same_seed_and_ids(world_dir, tiny_model, tmp_path):
    """docs/decoding.md: a sampled row is seeded by (seed, request id, sample) and the runner's
    request id is the item's id. So ``deepalign ed`` from the command line and
    ``target.generate`` from Python, one request alone, give the same sample for the same id."""
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.registry import make_target
    from deepalign.runs.rundir import RunDir

    prompts = tmp_path / "prompts.jsonl"
    queries = {"first": "tell me of the harbour", "short": "name a river", "third": "describe the old tower"}
    prompts.write_text("".join(json.dumps({"id": k, "prompt": q}) + "\n" for k, q in queries.items()))
    main(["ed", "--base", str(tiny_model), "--aligned", str(tiny_model), "--alpha", "0.5", "--prompts", str(prompts),
          "--out", str(tmp_path / "run"), "--judges", "keyword", "--max_new_tokens", "8", "--temperature", "1.0",
          "--num_samples", "2", "--seed", "3", "--quiet", "--no_report"])
    rows = RunDir(tmp_path / "run").rows()
    assert len(rows) == 6
    target = make_target(f"ed:base={tiny_model},aligned={tiny_model},alpha=0.5")
    cfg = GenConfig(do_sample=True, temperature=1.0, max_new_tokens=8, num_samples=2, seed=3)
    for item in ("short", "third"):  # not the batch's first row: its position must not matter
        alone = target.generate([Request(id=item, query=queries[item])], cfg)[0]
        cli = sorted((r for r in rows if r.item == item), key=lambda r: r.sample)
        assert [g.text for g in alone] == [r.response for r in cli]


def test_a_rows_system_prompt_reaches_the_model_or_is_refused_by_name(world_dir, tiny_model, tmp_path, capsys):
    """A prompts file's per-row ``system`` changes what the model reads: it reaches the prompt
    (the model's chat template), or the run is refused naming why, never dropped silently."""
    from deepalign.runs.rundir import RunDir

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "name a river", "system": "answer as the old keeper"}) + "\n"
                       + json.dumps({"id": "b", "prompt": "name a tower"}) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", "--target", f"hf:{tiny_model}", "--attacks", "direct,completion", "--dataset", str(prompts),
                 "--allow_unknown_tokens", "--judge", "keyword", "--max_new_tokens", "3", "--log_prompts", "--out", str(out),
                 "--quiet"]) == 0
    rows = {(r.attack, r.item): r for r in RunDir(out).rows()}
    for attack in ("direct", "completion"):
        a, b = rows[(attack, "a")], rows[(attack, "b")]
        assert a.prompt["system"] == "answer as the old keeper" and "system" not in b.prompt
        assert a.prompt["rendered"].startswith("<bos> <system> answer as the old keeper <user> name a river")
        assert "<system>" not in b.prompt["rendered"]
    base = ["--base", str(tiny_model), "--aligned", str(tiny_model), "--alpha", "0.5", "--prompts", str(prompts),
            "--judges", "keyword", "--max_new_tokens", "3", "--quiet", "--no_report"]
    # ED's base model reads the default text template, which has no place for a system prompt
    assert main(["ed", *base, "--out", str(tmp_path / "ed")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no {system} slot for the system prompt 'answer as the old keeper'" in err
    assert not (tmp_path / "ed" / "responses.jsonl").exists() or not (tmp_path / "ed" / "responses.jsonl").read_text()
    assert main(["ed", *base, "--out", str(tmp_path / "ed2"), "--base_format", "text:{system}\\nQuery: {query}\\nResponse:"]) == 0
    row = next(r for r in RunDir(tmp_path / "ed2").rows() if r.item == "a")
    assert row.prompt["system"] == "answer as the old keeper"
    # an attack that sets its own system prompt cannot also carry the row's
    assert main(["eval", "--target", f"hf:{tiny_model}", "--attacks", "cipher:atbash:system", "--dataset", str(prompts),
                 "--allow_unknown_tokens", "--judge", "keyword", "--max_new_tokens", "3", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 2
    assert "item 'a' has a system prompt, but attack cipher:atbash:system sets its own" in capsys.readouterr().err


def test_a_rejudge_whose_verdicts_are_all_errors_fails(world_dir, tiny_model, tmp_path, capsys):
    """A judge model that cannot judge (a tiny random model answers no rubric) gives only error
    verdicts: ``deepalign judge`` fails with one line naming the judge, writes none of its
    errors (a rerun retries), and a judge that works prints a line of its own."""
    from deepalign.runs.rundir import RunDir

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model)
    cfg.max_position_embeddings = 2048  # room for the rubric prompt and 512 new tokens
    judge_dir = tmp_path / "judge"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(judge_dir)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(judge_dir)
    run = tmp_path / "run"
    assert main(["eval", "--target", f"hf:{tiny_model}", "--world", str(world_dir), "--dataset", "world:harmful",
                 "--limit", "3", "--judge", "keyword", "--max_new_tokens", "3", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["judge", str(run), "--judges", "llm:strongreject-hardened", "--judge_model", f"hf:{judge_dir}",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "judge llm:strongreject-hardened gave no verdict on its first 3 responses" in err
    assert all(set(r.verdicts) == {"keyword"} for r in RunDir(run).rows())
    assert main(["judge", str(run), "--judges", "keyword:nocase"]) == 0
    assert "  keyword:nocase: 3 verdicts, 0 errors; harmful " in capsys.readouterr().out
