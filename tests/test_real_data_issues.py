"""The nine failures of issue 12 (real benchmark data), each reproduced on a small file in the
benchmark's real schema (neutral placeholder text) and checked gone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepalign.cli import main
from deepalign.data.datasets import DataOptions, open_dataset
from deepalign.data.loaders import load_eval_prompts
from deepalign.decoding.base import Generation
from deepalign.errors import DeepAlignError
from deepalign.evaluation.judging import judge_run
from deepalign.runs.rundir import RunDir
from deepalign.evaluation.runner import run_eval

FIX = Path(__file__).parent / "fixtures" / "data" / "presets"


class RecordingTarget:
    """Refuses everything; remembers every request."""

    name = "recorder"

    def __init__(self):
        self.requests = []

    def generate(self, requests, config):
        self.requests.extend(requests)
        return [[Generation(r.id, s, "I'm sorry, but I cannot help with that.", 8, "eos") for s in range(config.num_samples)]
                for r in requests]


def evaluate(tmp_path, datasets, attacks="direct", target=None, **kw):
    target = target or RecordingTarget()
    summary = run_eval(targets=[target], attacks=attacks, datasets=datasets, judges="keyword", out_dir=tmp_path / "run",
                       quiet=True, **kw)
    return summary, target, RunDir(tmp_path / "run")


def cell(summary, attack="direct", dataset=None):
    return next(c for c in summary["results"] if c["attack"] == attack and (dataset is None or c["dataset"].startswith(dataset)))


# 1. XSTest's label was read as the answer --------------------------------------------------------
def test_1_xstest_label_is_the_kind(tmp_path):
    items = load_eval_prompts(FIX / "xstest_prompts.csv")
    assert [it.kind for it in items] == ["benign"] * 3 + ["harmful"] * 2  # was: 5 x helpful, answer "safe"/"unsafe"
    assert all(it.answer is None for it in items)
    summary, _, _ = evaluate(tmp_path, [str(FIX / "xstest_prompts.csv")])
    c = cell(summary)
    assert (c["n_benign_items"], c["n_harmful_items"]) == (3, 2)
    assert c["over_refusal"]["rate"] == 1.0 and c["helpful"]["n"] == 0  # refusing safe prompts is over-refusal
    types = {x["category"]: x for x in summary["by_category"] if x["judge"] == "keyword"}
    assert types["homonyms"]["over_refusal"]["n"] == 2 and types["contrast_homonyms"]["refusal"]["n"] == 1
    with pytest.raises(DeepAlignError, match="each XSTest row says its own kind; drop the benign: prefix"):
        open_dataset(f"benign:{FIX / 'xstest_prompts.csv'}")  # was: the unsafe contrast prompts counted as benign


# 2. MMLU accuracy inflated by -C answers and letter-anywhere scoring ------------------------------------
def test_2_mmlu_results_are_scored_strictly(tmp_path):
    src = FIX / "derta/results/helpfulness/mmlu/Placeholder-8B_vanill_eval_mmlu_500.json"
    summary = judge_run(run_dir=str(src), out_dir=str(tmp_path / "pub"), quiet=True)  # no judge needed for answers
    [c] = summary["results"]
    # six published answers: 4 correct, one states B for C (it mentions B elsewhere), one has no extractable answer;
    # the letter-anywhere check credited all six
    assert c["helpful"] == {"k": 4, "n": 6, "rate": 4 / 6, "ci95": c["helpful"]["ci95"]}
    assert c["answers"] == {"correct": 4, "wrong": 1, "no_answer": 1}
    rows = RunDir(tmp_path / "pub").rows()
    assert [r.extracted for r in rows if r.answer_status != "correct"] == ["C", None]
    assert "| 66.7% | 4 | 1 | 1 |" in (tmp_path / "pub" / "report.md").read_text()


# 3. ed --prompts read a CSV as plain text -------------------------------------------------------------
def test_3_ed_reads_tables_with_the_same_loaders():
    """ED reads its prompts with the dataset loaders (it runs through the evaluation runner): a
    CSV is a table, a DeRTa completion-attack file is sent raw, --sample applies."""
    from deepalign.data.datasets import load_dataset

    adv = load_dataset(str(FIX / "harmful_behaviors.csv"))
    assert [r.prompt for r in adv] == ["placeholder goal 1", "placeholder goal 2", "placeholder goal 3"]  # no header row
    hb = load_dataset(str(FIX / "harmbench_behaviors_text_all.csv"))
    assert len(hb) == 8 and hb[6].prompt.endswith("\n\n---\n\nplaceholder contextual behavior one")
    [raw] = load_dataset(str(FIX / "derta/data/test/safety_completionattack.json"), limit=1)
    assert raw.meta.get("raw") and raw.prompt.startswith("placeholder completion text one")  # sent raw
    sampled = load_dataset(str(FIX / "harmbench_behaviors_text_all.csv"), options=DataOptions(sample=5, sample_seed=1))
    assert len(sampled) == 5


# 4. columns could not be named from the command line ------------------------------------------------------
def test_4_fields_subset_split_from_the_command_line(tmp_path, monkeypatch):
    from deepalign.cli.parser import StageParser
    from deepalign.cli import ed, eval as eval_cli, train

    argv = ["--fields", "prompt=request_text,category=topic", "--subset", "main", "--split", "test", "--sample", "5",
            "--sample_seed", "3"]
    for module, extra in ((eval_cli, []), (ed, []), (train, ["--fields", "query=q"])):
        parsed = StageParser("x", module.OPTIONS).parse(argv + extra)
        data = next(o for o in parsed if isinstance(o, DataOptions))
        assert (data.subset, data.split, data.sample, data.sample_seed) == ("main", "test", 5, 3)
        assert data.columns()["prompt"] == "request_text"
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("request_text,topic\nplaceholder request one,alpha\nplaceholder request two,beta\n")
    summary, target, _ = evaluate(tmp_path, [str(renamed)], fields=["prompt=request_text,category=topic"])
    assert [r.query for r in target.requests] == ["placeholder request one", "placeholder request two"]
    assert {c["category"] for c in summary["by_category"]} == {"alpha", "beta"}
    assert main(["eval", "--target", "hf:none", "--dataset", str(renamed), "--fields", "prompt", "--out",
                 str(tmp_path / "x")]) == 2  # a malformed pair is one line, before anything loads
    # StrongREJECT and toxic-chat need no mapping at all: their schemas are known
    assert load_eval_prompts(FIX / "strongreject_dataset.csv")[0].prompt == "placeholder forbidden prompt one"
    assert load_eval_prompts(FIX / "toxic_chat.csv")[0].prompt == "placeholder toxic message"
    # hub configurations reach the hub: --subset main for openai/gsm8k
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, split=None, **kw: (
        calls.append((name, subset, split)),
        datasets.Dataset.from_list([{"question": "Placeholder?", "answer": "1+1\n#### 2"}]))[1])
    open_dataset("openai/gsm8k", DataOptions(subset="main"))
    assert calls == [("openai/gsm8k", "main", None)]  # all splits; the test split is the one evaluated


# 5. JSON Lines of bare strings failed with "malformed JSON (Extra data)" ------------------------------------
def test_5_json_lines_of_bare_strings(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text('"placeholder output one"\n"placeholder output two"\n')
    from deepalign.data.sources import read_source

    _, rows = read_source(str(path))
    assert [r.data for r in rows] == [{"text": "placeholder output one"}, {"text": "placeholder output two"}]
    pair = load_eval_prompts(FIX / "derta/results/safety/pair/PAIR_result_placeholder-8B-vanilla.json")
    assert [it.prompt for it in pair] == ["placeholder goal one", "placeholder goal two"]
    path.write_text('"placeholder"\n{"question": "placeholder"}\n')
    with pytest.raises(DeepAlignError, match=r"outputs.json:2: mixes JSON objects and bare strings"):
        read_source(str(path))


# 6. HarmBench targets could not be joined; prefill on HarmBench was skipped silently ------------------------
def test_6_harmbench_targets_and_the_attacks_that_did_not_apply(tmp_path):
    hb = str(FIX / "harmbench_behaviors_text_all.csv")
    summary, _, run = evaluate(tmp_path, [hb, str(FIX / "harmful_behaviors.csv")], attacks="direct,prefill:2w")
    [skipped] = run.info().not_applied
    assert (skipped["attack"], skipped["applied"], skipped["items"]) == ("prefill:2w", 0, 8)
    assert skipped["dataset"].startswith("harmbench_behaviors_text_all@")
    assert "targets=" in next(iter(skipped["reasons"]))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Attacks that did not apply" in report and "| prefill:2w | harmbench_behaviors_text_all@" in report
    shutil.rmtree(tmp_path / "run")
    joined = f"harmbench:{hb},targets={FIX / 'harmbench_targets_text.json'}"
    summary, target, run = evaluate(tmp_path, [joined], attacks="prefill:2w")
    assert cell(summary, "prefill:2w")["n"] == 8 and not run.info().not_applied
    assert {r.prefill for r in target.requests} >= {"Sure, here"}


# 7. DeRTa's test sets and alpaca_eval loaded as kind unknown ----------------------------------------------------
def test_7_derta_test_sets_and_alpaca_eval_kinds(tmp_path):
    sets = {n: str(FIX / "derta/data/test" / f"{n}.json") for n in
            ("safety_codeattack", "safety_completionattack", "helpfulness_alpaca_eval_300")}
    summary, target, run = evaluate(tmp_path, list(sets.values()), attacks="direct,cipher:caesar")
    alpaca = cell(summary, dataset="helpfulness_alpaca_eval_300")
    assert (alpaca["n_harmful_items"], alpaca["n_benign_items"]) == (0, 2)  # not in the ASR
    assert alpaca["harmful"]["n"] == 0 and alpaca["over_refusal"]["rate"] == 1.0
    code = cell(summary, dataset="safety_codeattack")
    assert code["n_harmful_items"] == 2 and code["harmful"]["n"] == 2
    raw = [r for r in target.requests if r.text is not None]
    assert [r.text for r in raw] == [json.loads(line)["question"] for line in open(sets["safety_completionattack"])]
    titles = {d.name: d.title for d in run.info().datasets}
    reasons = {titles[s["dataset"]]: s for s in run.info().not_applied}
    assert set(reasons) == {"safety_codeattack", "safety_completionattack"}  # the cipher does not stack on them
    assert "already carry the codeattack attack" in next(iter(reasons["safety_codeattack"]["reasons"]))


# 8. --limit took the first N rows ------------------------------------------------------------------------------
def test_8_sample_is_seeded_and_stratified():
    hb = str(FIX / "harmbench_behaviors_text_all.csv")
    first = open_dataset(hb, DataOptions(limit=5))
    assert {it.meta["functional_category"] for it in first.items} == {"standard", "copyright"}  # the file's order
    assert first.selection == "first 5 of 8 in file order (--limit)"
    sample = open_dataset(hb, DataOptions(sample=5, sample_seed=7))
    strata = {it.meta["stratum"] for it in sample.items}
    assert len(strata) == 5 and {s.split("/")[0] for s in strata} == {"standard", "copyright", "contextual"}
    assert [it.id for it in open_dataset(hb, DataOptions(sample=5, sample_seed=7)).items] == [it.id for it in sample.items]
    assert "random sample of 5 of 8 (seed 7, stratified over 5 categories)" == sample.selection
    draws = {tuple(it.id for it in open_dataset(hb, DataOptions(sample=5, sample_seed=s)).items) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    sr = open_dataset(str(FIX / "strongreject_dataset.csv"), DataOptions(sample=2))
    assert {it.meta["category"] for it in sr.items} == {"Placeholder category one", "Placeholder category two"}
    with pytest.raises(DeepAlignError, match="--limit excludes --sample"):
        DataOptions(sample=2, limit=2)


# 9. The same file by a relative and an absolute path was evaluated twice --------------------------------------
def test_9_one_dataset_identity_for_every_path(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(FIX / "strongreject_dataset.csv", data / "sr.csv")
    monkeypatch.chdir(tmp_path)
    summary, target, run = evaluate(tmp_path, ["data/sr.csv", str((data / "sr.csv").resolve())])
    assert len(target.requests) == 3 and len(run.rows()) == 3 and len(summary["datasets"]) == 1
    again = RecordingTarget()
    evaluate(tmp_path, [os.path.join(".", "data", "..", "data", "sr.csv")], target=again)
    assert again.requests == []  # resumed: every row was already there under the same identity
    (tmp_path / "elsewhere").mkdir()
    copy = tmp_path / "elsewhere" / "sr.csv"  # a copy is the same dataset (ids without an id column come from the name)
    shutil.copy(data / "sr.csv", copy)
    assert open_dataset(str(copy)).name.split("@")[1] == summary["datasets"][0].split("@")[1]
    assert open_dataset(f"benign:{copy}").name != open_dataset(str(copy)).name  # another meaning, another dataset
