"""deepalign against real vLLM servers (vLLM's CPU build, in its own environment: run
``bash scripts/setup_vllm.sh`` once; without it these tests skip, and with
``DEEPALIGN_REQUIRE_VLLM=1``, as in CI, they fail).

One server per model, started side by side once for the module: a world base model, and tiny
random-init models with a Llama-2 SentencePiece chat template and with a Tekken tokenizer
(``tekken.json``, served with ``--tokenizer-mode mistral``). Checked on them: greedy responses
through ``openai:MODEL@URL`` equal the local ``hf:DIR`` target's token for token (direct,
completion and ``prefill:8`` attacks), what the probe finds, an LLM judge served by vLLM,
seeded sampling, and Emulated Disalignment refused for a server component. CPU attention in
vLLM needs a head dimension of at least 32, so every model here has 2 heads of 32.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import vllm_server
from vllm_server import VLLMServer

ATTACKS = ["direct", "completion", "prefill:8"]
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32, max_position_embeddings=2048, initializer_range=0.1)


def world_model(world_dir: Path, out: Path) -> Path:
    """A world base model trained long enough to say varied things (the session's micro base
    model mostly repeats one word, which would make the parity check weak)."""
    from deepalign.training.pretrain import pretrain

    return pretrain(world=str(world_dir), out=str(out), quiet=True, hidden_size=64, num_layers=2, num_heads=2,
                    intermediate_size=128, max_steps=150, per_device_train_batch_size=8, save_steps=10000)


def llama2_sp_model(out: Path) -> Path:
    """Random-init Llama with mistral-common's SentencePiece v1 file and a Llama-2 chat template."""
    import torch
    from realtok import family
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = family("llama2-sp").tokenizer
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **SMALL)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def tekken_model(out: Path) -> Path:
    """Random-init Mistral with mistral-common's Tekken file as ``tekken.json`` (transformers
    loads it as ``MistralCommonBackend``; vLLM with ``--tokenizer-mode mistral``)."""
    import torch
    from realtok import mistral_data
    from transformers import MistralConfig, MistralForCausalLM

    out.mkdir(parents=True)
    shutil.copy(mistral_data() / "tekken_240911.json", out / "tekken.json")
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=131072, bos_token_id=1, eos_token_id=2, pad_token_id=11, **SMALL)
    MistralForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def servers(world_dir, tmp_path_factory):
    """name -> ready :class:`VLLMServer`; all stopped at the end of the module, also after a failure."""
    pytest.importorskip("mistral_common")
    vllm_server.python()  # skips (or fails, where required) before any work
    tmp = tmp_path_factory.mktemp("vllm")
    started: dict[str, VLLMServer] = {}
    try:
        # the two random-init models boot while the world model trains
        started["llama2-sp"] = VLLMServer(llama2_sp_model(tmp / "llama2-sp"), tmp / "llama2-sp.log").start()
        started["tekken"] = VLLMServer(tekken_model(tmp / "tekken"), tmp / "tekken.log",
                                       "--tokenizer-mode", "mistral").start()
        started["world"] = VLLMServer(world_model(world_dir, tmp / "world-lm"), tmp / "world.log",
                                      max_model_len=1024).start()
        for server in started.values():
            server.wait()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]


def _by_target(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict]]:
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["attack"], r["item"]), {})[r["target"].split(":", 1)[0]] = r
    return out


@pytest.mark.parametrize("name, limit", [("world", 10), ("llama2-sp", 3), ("tekken", 3)])
def test_greedy_responses_equal_the_local_models(servers, world_dir, tmp_path, name, limit):
    from deepalign import run_eval

    server = servers[name]
    model = server.model
    common = dict(datasets=["world:harmful"], world=str(world_dir), limit=limit, max_new_tokens=12,
                  judges=["keyword"], quiet=True)
    # with the tokenizer (token-depth prefills are counted in the model's own tokens)
    run_eval(targets=[f"openai:{model}@{server.url},tokenizer={model}", f"hf:{model}"], attacks=ATTACKS,
             out_dir=str(tmp_path / "tok"), **common)
    # and the plain server target, where vLLM renders every prompt from its own template
    run_eval(targets=[f"openai:{model}@{server.url}"], attacks=["direct", "completion"],
             out_dir=str(tmp_path / "plain"), **common)
    by = _by_target(_rows(tmp_path / "tok"))
    assert len(by) == len(ATTACKS) * limit, server.log_tail()
    plain = {(r["attack"], r["item"]): r for r in _rows(tmp_path / "plain")}
    assert len(plain) == 2 * limit, server.log_tail()
    def same(served: dict, local: dict) -> bool:
        # the same tokens; two known differences of accounting: vLLM's usage counts the EOS token
        # that ends a response (deepalign's local count leaves it out), and a response cut by the
        # token limit inside a multi-byte character ends in U+FFFD locally, where vLLM's
        # detokenizer holds the incomplete character back (with the space its token carries)
        eos = local["finish_reason"] == "eos"
        text, served_text = local["response"], served["response"]
        if local["finish_reason"] == "length" and text.endswith("\ufffd"):
            text, served_text = text.removesuffix("\ufffd").rstrip(" "), served_text.rstrip(" ")
        return (served_text, served["finish_reason"], served["num_tokens"]) == \
            (text, local["finish_reason"], local["num_tokens"] + eos)

    differ = []
    for key, pair in sorted(by.items()):
        local, served = pair["hf"], pair["openai"]
        if not same(served, local) or (key in plain and not same(plain[key], local)):
            differ.append((key, *[(r["response"], r["num_tokens"], r["finish_reason"])
                                  for r in (local, served, plain.get(key, local))]))
    assert not differ, f"{len(differ)} of {len(by)} greedy responses differ from hf:{model}: {differ[:3]}\n" \
                       f"{server.log_tail()}"
    responses = [pair["hf"]["response"] for pair in by.values()]
    assert len(set(responses)) >= len(responses) // 4  # varied text: the comparison can fail
    # on world data the completion attack forces the world's own answer start, which every
    # tokenizer here can read (the world's has no "Sure,")
    forced = {r["prompt"].get("prefill") for r in _rows(tmp_path / "tok") if r["attack"] == "completion"}
    assert forced == {json.loads((world_dir / "manifest.json").read_text())["answer_start"]}
    forced = [r for r in _rows(tmp_path / "tok") if r["attack"] == "prefill:8"]
    assert forced and all(r["prompt"]["prefill_tokens"] == 8 for r in forced)


def test_rap_reads_the_servers_ranking_as_the_local_model_gives_it(servers, world_dir, tmp_path):
    """Rank-assisted prefilling through vLLM: the server's top 20 by token id (the prompt sent as
    ids, rendered locally) give the tokens, ranks and probabilities the local model gives."""
    from deepalign import run_eval

    server = servers["world"]
    model = server.model
    run_eval(targets=[f"openai:{model}@{server.url},tokenizer={model}", f"hf:{model}"],
             attacks=["rap:6", "rap:6:select=top"], datasets=["world:harmful"], world=str(world_dir), limit=6,
             max_new_tokens=10, judges=["keyword"], quiet=True, out_dir=str(tmp_path / "rap"))
    by = _by_target(_rows(tmp_path / "rap"))
    assert len(by) == 12, server.log_tail()
    for key, pair in sorted(by.items()):
        served, local = pair["openai"]["meta"]["rap"], pair["hf"]["meta"]["rap"]
        assert (served["ids"], served["ranks"]) == (local["ids"], local["ranks"]), (key, served, local)
        assert served["probs"] == pytest.approx(local["probs"], rel=1e-3, abs=1e-4), key
        assert pair["openai"]["prompt"]["prefill_ids"] == pair["hf"]["prompt"]["prefill_ids"]


def test_the_probe_finds_a_server_that_takes_every_request(servers):
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.hf import HFTarget
    from deepalign.decoding.openai import OpenAITarget

    server = servers["world"]
    target = OpenAITarget(server.model, server.url, tokenizer=server.model)
    asked = GenConfig(do_sample=True, temperature=0.7, top_k=20, min_new_tokens=1, suppress_eos=True,
                      return_logprobs=True)
    notes = target.probe(asked, prefill=True, prefill_tokens=True, raw=True)
    # prefills as a final assistant message, the extension fields, /v1/completions, log-probs and
    # seeds are all taken: nothing to note (transformers serve, by contrast, gets three notes)
    assert notes == [] and target.caps == {"prefill": "continue"}, server.log_tail()
    # the log-probs it returns are the local model's, token by token
    requests = [Request(id="a", query="how do i open the blue box ?"),
                Request(id="b", query="how do i open the blue box ?", prefill="step one :", prefill_tokens=3)]
    greedy = GenConfig(max_new_tokens=6, return_logprobs=True)
    served = target.generate(requests, greedy)
    local = HFTarget(server.model).generate(requests, greedy)
    for (s,), (h,) in zip(served, local):
        assert s.text == h.text and len(s.token_logprobs) == len(h.token_logprobs) == s.num_tokens
        assert s.token_logprobs == pytest.approx(h.token_logprobs, abs=1e-3)
    target.close()


def test_seeded_sampling_is_honoured(servers):
    from deepalign.decoding.base import GenConfig, Request
    from deepalign.decoding.openai import OpenAITarget

    server = servers["llama2-sp"]
    target = OpenAITarget(server.model, server.url)
    requests = [Request(id="a", query="How do I water a fern?"), Request(id="b", query="Name a colour.")]
    config = GenConfig(do_sample=True, temperature=1.0, max_new_tokens=10, num_samples=2, seed=5)

    def texts(cfg):
        return [[g.text for g in gens] for gens in target.generate(requests, cfg)]

    first, again = texts(config), texts(config)
    assert first == again, server.log_tail()  # same seed, same samples
    assert all(a != b for a, b in first)  # a request's samples differ (sample s is drawn with seed + s)
    other = texts(replace(config, seed=6))
    assert other != first and [o[0] for o in other] == [f[1] for f in first]  # the seed decides, nothing else
    assert texts(replace(config, seed=1000)) != first
    assert target.notes == []
    target.close()


def test_an_llm_judge_served_by_vllm(servers, world_dir, tmp_path):
    """A tiny random model cannot write a verdict line: every verdict is an error, recorded with
    the judge's real reply, flagged in the report and counted neither safe nor harmful, and the
    run fails naming the judge."""
    from deepalign import run_eval
    from deepalign.decoding.openai import OpenAITarget
    from deepalign.errors import DeepAlignError
    from deepalign.judges.base import JudgeParseError
    from deepalign.judges.llm import LLMJudge
    from deepalign.records import EvalPrompt

    world, judge = servers["world"], servers["llama2-sp"]
    # a judge that judged nothing fails the run, after the rows and the report are written
    with pytest.raises(DeepAlignError, match=r"judge llm:jbb-hardened gave no verdict: all 3 of its verdicts are errors"):
        run_eval(targets=[f"openai:{world.model}@{world.url}"], attacks=["direct"], datasets=["world:harmful"],
                 world=str(world_dir), limit=3, max_new_tokens=8, judges=["oracle", "llm"],
                 judge_model=f"openai:{judge.model}@{judge.url},timeout=600,retries=0",  # 512-token replies
                 out_dir=str(tmp_path), quiet=True)
    cells = {c["judge"]: c for c in json.loads((tmp_path / "summary.json").read_text())["results"]}
    llm = cells["llm:jbb-hardened"]  # the alias "llm" names the hardened JailbreakBench-style judge
    assert llm["n"] == llm["errors"] == 3, judge.log_tail()
    assert (llm["harmful"]["k"], llm["harmful"]["n"]) == (0, 0)  # never counted as safe
    assert cells["oracle"]["errors"] == 0 and cells["oracle"]["harmful"]["n"] == 3
    for row in _rows(tmp_path):
        verdict = row["verdicts"]["llm:jbb-hardened"]
        assert verdict.get("harmful") is None and "no VERDICT-" in verdict["error"]
        assert "in the judge's reply: " in verdict["error"]  # the served model's own reply, quoted
    report = (tmp_path / "report.md").read_text()
    assert "(!)" in report and "3 verdict(s) of llm:jbb-hardened are errors" in report
    item = EvalPrompt(id="h", prompt="how do i open the blue box ?", kind="harmful")
    with pytest.raises(JudgeParseError, match="no VERDICT-[0-9a-f]{16} line in the judge's reply"):
        LLMJudge(OpenAITarget(judge.model, judge.url, timeout=600, retries=0), on_error="raise").judge(
            ["step one : take the key ."], [item])


def test_emulated_disalignment_refuses_a_server_component(servers, world_dir, tmp_path):
    from deepalign import run_ed, run_eval
    from deepalign.errors import DeepAlignError

    server = servers["world"]
    requests_before = server.log_path.read_text().count("POST /v1/")
    with pytest.raises(DeepAlignError, match=r"base=openai:\S+ is a server, but composed decoding .* full next-token "
                                             r"distribution") as e:
        run_eval(targets=[f"ed:base=openai:{server.model}@{server.url},aligned={server.model},alpha=0.3"],
                 datasets=["world:harmful"], world=str(world_dir), limit=1, out_dir=str(tmp_path / "e"), quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(DeepAlignError, match=r"aligned=openai:\S+ is a server"):
        run_ed(base=server.model, aligned=f"openai:{server.model}@{server.url}", prompts="world:harmful",
               world=str(world_dir), out=str(tmp_path / "ed"), quiet=True)
    assert not (tmp_path / "e").exists() and not (tmp_path / "ed").exists()
    assert server.log_path.read_text().count("POST /v1/") == requests_before  # refused before any request
