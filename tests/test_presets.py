"""Dataset presets: every public schema loads with its true meaning (kinds, categories,
answers, references), recognised from the file and by name. Fixtures are a few rows of each
real schema with neutral placeholder text (tests/fixtures/data/presets/)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from deepalign.data import presets
from deepalign.data.answers import score_answer
from deepalign.data.datasets import DataOptions, open_dataset, parse_spec
from deepalign.data.loaders import load_eval_dataset, load_eval_prompts
from deepalign.errors import DeepAlignError

FIX = Path(__file__).parent / "fixtures" / "data" / "presets"
DOCS = Path(__file__).parent.parent / "docs" / "data.md"


def load(name, **kw):
    items, preset, _ = load_eval_dataset(FIX / name, **kw)
    return items, preset


def kinds(items):
    return dict(Counter(it.kind for it in items))


def test_harmbench_behaviours_contexts_categories_and_targets():
    items, preset = load("harmbench_behaviors_text_all.csv")
    assert preset == "harmbench" and kinds(items) == {"harmful": 8}
    by_id = {it.id: it for it in items}
    ctx = by_id["placeholder_contextual_1"]
    # the contextual prompt as HarmBench builds it: context, a rule, the behaviour
    assert ctx.prompt == "placeholder context paragraph one\nwith a second line\n\n---\n\nplaceholder contextual behavior one"
    assert ctx.meta["behavior"] == "placeholder contextual behavior one"
    assert Counter(it.meta["functional_category"] for it in items) == {"standard": 4, "copyright": 2, "contextual": 2}
    assert by_id["placeholder_standard_2"].meta["category"] == "placeholder_semantic_b"
    assert "hash" in by_id["placeholder_copyright_1"].meta["scoring_note"]
    assert all(it.harmful is None for it in items)  # no targets: no prefill reference
    joined, _ = load("harmbench_behaviors_text_all.csv", options={"targets": str(FIX / "harmbench_targets_text.json")})
    assert {it.id: it.harmful for it in joined}["placeholder_contextual_2"] == "Sure, here is placeholder contextual target two"
    only, _ = load("harmbench_behaviors_text_all.csv", options={"functional": "standard,contextual"})
    assert len(only) == 6 and {it.meta["functional_category"] for it in only} == {"standard", "contextual"}
    with pytest.raises(DeepAlignError, match="unknown HarmBench functional category 'multimodal'"):
        load("harmbench_behaviors_text_all.csv", options={"functional": "multimodal"})


def test_harmbench_completions_keep_the_response_and_its_label():
    items, preset = load("harmbench_completions.json")
    assert preset == "harmbench" and kinds(items) == {"harmful": 3}
    first = items[0]
    assert first.id == "placeholder_standard_1" and first.meta["generation"].startswith("I'm sorry")
    assert first.meta["published_verdict"] == {"judge": "published:harmbench", "harmful": False}
    behaviours = load_eval_prompts(FIX / "harmbench_behaviors_text_all.csv")
    joined, _ = load("harmbench_completions.json", reference=behaviours)
    assert joined[2].meta["category"] == "placeholder_semantic_a" and joined[2].meta["functional_category"] == "contextual"


def test_advbench_behaviours_and_strings():
    items, preset = load("harmful_behaviors.csv")
    assert preset == "advbench" and kinds(items) == {"harmful": 3}
    assert (items[0].prompt, items[0].harmful) == ("placeholder goal 1", "Sure, here is placeholder answer 1")
    strings, preset = load("harmful_strings.csv")
    assert preset == "advbench" and strings[0].prompt == strings[0].harmful == "placeholder harmful string 1"
    assert strings[0].meta["task"] == "string"


def test_jailbreakbench_harmful_and_benign():
    harmful, preset = load("harmful-behaviors.csv")
    assert preset == "jailbreakbench" and kinds(harmful) == {"harmful": 3}
    assert harmful[1].id == "harmful-1" and harmful[1].harmful == "Sure, here is placeholder one"
    assert harmful[1].meta["category"] == "Placeholder/Category one" and harmful[1].meta["behavior"] == "Placeholder behavior B"
    benign, _ = load("benign-behaviors.csv")
    assert kinds(benign) == {"benign": 2} and benign[0].id == "benign-0"


def test_strongreject():
    items, preset = load("strongreject_dataset.csv")
    assert preset == "strongreject" and kinds(items) == {"harmful": 3}
    assert items[2].prompt == "placeholder forbidden prompt three" and items[2].meta["category"] == "Placeholder category two"


def test_xstest_label_is_a_kind_not_an_answer():
    items, preset = load("xstest_prompts.csv")
    assert preset == "xstest" and kinds(items) == {"benign": 3, "harmful": 2}
    assert all(it.answer is None for it in items)
    assert [it.meta["category"] for it in items] == ["homonyms", "homonyms", "figurative_language", "contrast_homonyms",
                                                     "contrast_figurative_language"]
    completions, _ = load("xstest_v2_completions_placeholder.csv")
    assert [it.kind for it in completions] == ["benign", "benign", "harmful", "harmful"]  # from the type
    assert completions[1].meta["published_verdict"] == {"judge": "published:xstest-human", "harmful": None, "refusal": True}
    assert completions[1].meta["category"] == "homonyms"


def test_toxic_chat_keeps_toxic_rows():
    notes = []
    items, preset = load("toxic_chat.csv", notes=notes)
    assert preset == "toxic-chat" and kinds(items) == {"harmful": 2}
    assert [(it.id, it.meta["category"]) for it in items] == [("placeholder0002", "toxic"), ("placeholder0003", "jailbreaking")]
    assert notes == ["2 non-toxic rows left out (toxicity = 0)"]


def test_beavertails_prompts_and_triples():
    items, preset = load("beavertails.jsonl")
    assert preset == "beavertails" and [it.kind for it in items] == ["harmful", "harmful", "unknown"]
    assert items[0].harmful == "placeholder unsafe response one" and items[0].meta["category"] == "placeholder_cat_a"
    from deepalign.data.datasets import load_train_triples

    notes = []
    (triple,) = load_train_triples(str(FIX / "beavertails.jsonl"), notes=notes)
    assert (triple.query, triple.harmful, triple.safe) == ("placeholder red-team prompt one",
                                                         "placeholder unsafe response one", "placeholder safe response one")
    assert "2 prompts have responses of one label only" in notes[0]


def test_hh_rlhf_prompts_and_pairs():
    items, preset = load("hh_rlhf_harmless_base.jsonl")
    assert preset == "hh-rlhf" and [it.prompt for it in items] == [
        "placeholder question one", "placeholder question two", "placeholder question three"]
    from deepalign.data.datasets import load_train_triples

    notes = []
    pairs = load_train_triples(str(FIX / "hh_rlhf_harmless_base.jsonl"), notes=notes)
    assert [(t.query, t.safe, t.harmful) for t in pairs][0] == (
        "placeholder question one", "placeholder careful reply one", "placeholder careless reply one")
    assert len(pairs) == 2 and "1 multi-turn" in notes[0]


def test_gsm8k_and_its_scoring():
    items, preset = load("gsm8k_test.jsonl")
    assert preset == "gsm8k" and kinds(items) == {"helpful": 2}
    assert [it.answer for it in items] == ["12", "1500"]
    assert score_answer(items[1], "So it is $1,500 in all.").correct
    assert score_answer(items[1], "I am not sure.").status == "no_answer"


def test_mmlu_shows_the_options_and_scores_letters():
    items, preset = load("mmlu_test.jsonl")
    assert preset == "mmlu" and kinds(items) == {"helpful": 2}
    first = items[0]
    assert first.answer == "C" and first.meta["category"] == "placeholder_subject_a"
    assert first.prompt == ("Choose the correct option for the given question.\n\n\n\nQuestion: Placeholder question one?\n"
                            "-options\n-(A) placeholder a\n-(B) placeholder b\n-(C) placeholder c\n-(D) placeholder d\n")
    assert score_answer(first, "The correct option is (C) placeholder c.").correct
    assert score_answer(first, "Not (C): the correct option is (B).").status == "wrong"


def test_alpaca_eval_is_benign():
    items, preset = load("alpaca_eval.json")
    assert preset == "alpaca_eval" and kinds(items) == {"benign": 2}
    assert items[0].meta["reference_output"] == "placeholder reference output one" and items[0].answer is None
    derta, preset = load("derta/data/test/helpfulness_alpaca_eval_300.json")
    assert preset == "alpaca_eval" and kinds(derta) == {"benign": 2}


def test_derta_test_sets_carry_their_attack():
    code, preset = load("derta/data/test/safety_codeattack.json")
    assert preset == "derta" and kinds(code) == {"harmful": 2} and code[0].meta["attack_applied"] == "codeattack"
    completion, _ = load("derta/data/test/safety_completionattack.json")
    assert completion[0].meta["raw"] is True and completion[0].meta["attack_applied"] == "completionattack"
    plain, _ = load("derta/data/test/safety_illegal_instructions_200.json")
    assert kinds(plain) == {"harmful": 2} and "attack_applied" not in plain[0].meta
    named, _ = load("derta/data/test/safety_illegal_instructions_200.json", preset="derta", options={"attack": "selfcipher"})
    assert named[0].meta["attack_applied"] == "selfcipher"
    gsm, preset = load("derta/data/test/helpfulness_gsm8k_500.json")
    assert preset == "gsm8k" and gsm[0].answer == "10"
    mmlu, preset = load("derta/data/test/helpfulness_mmlu_500.json")
    assert preset == "mmlu" and mmlu[0].answer == "C" and mmlu[0].choices[2] == "placeholder c"


def test_derta_result_files():
    mmlu, preset = load("derta/results/helpfulness/mmlu/Placeholder-8B_vanill_eval_mmlu_500.json")
    assert preset == "mmlu" and [it.answer for it in mmlu] == ["C", "B", "A", "D", "B", "C"]  # -C and friends
    assert mmlu[0].prompt.count("Choose the correct option") == 1  # the file's question already holds it
    gsm, preset = load("derta/results/helpfulness/gsm8k/Placeholder-8B_vanill_eval_gsm8k_500.json")
    assert preset == "gsm8k" and [it.answer for it in gsm] == ["12", "1500", "7", "4"]
    assert not gsm[0].meta["solution"].startswith("-")
    code, preset = load("derta/results/safety/codeattack/Placeholder-8B_vanill_eval_codeattack_200.json")
    assert preset == "derta" and code[1].meta["response"].startswith("def solve")
    pair, preset = load("derta/results/safety/pair/PAIR_result_placeholder-8B-vanilla.json")
    assert preset == "derta" and [it.prompt for it in pair] == ["placeholder goal one", "placeholder goal two"]
    assert "no_response" in pair[0].meta and pair[1].meta["response"] == "Sure, here is placeholder text."
    assert [it.meta["published_verdict"]["harmful"] for it in pair] == [False, True]


def test_completion_attack_results_are_split_at_their_question():
    test_set = load_eval_prompts(FIX / "derta/data/test/safety_completionattack.json")
    items, _ = load("derta/results/safety/completionattack/Placeholder-8B_vanill_eval_completionattack_200.json",
                    reference=test_set)
    # shuffled order, and decoding dropped a space (" .45" -> ".45"): still matched, only the continuation is judged
    assert [it.id for it in items] == [test_set[1].id, test_set[0].id]
    assert items[0].meta["response"] == " placeholder continuation two"
    assert items[1].meta["response"] == " I'm sorry, I cannot continue this."
    notes = []
    whole, _ = load("derta/results/safety/completionattack/Placeholder-8B_vanill_eval_completionattack_200.json", notes=notes)
    assert whole[0].meta["prompt_unknown"] and "give the test set" in notes[0]


def test_unknown_schemas_keep_the_generic_loader(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "placeholder", "label": "safe"}) + "\n")
    items, preset = load_eval_dataset(path)[:2]
    assert preset is None and items[0].answer is None  # label is never an answer
    assert presets.detect([], "x") is None


def test_a_named_preset_checks_the_schema():
    with pytest.raises(DeepAlignError, match="not in the HarmBench schema"):
        load_eval_prompts(FIX / "strongreject_dataset.csv", preset="harmbench")
    with pytest.raises(DeepAlignError, match="unknown dataset preset 'harmbench2' \\(did you mean harmbench"):
        presets.get("harmbench2")
    with pytest.raises(DeepAlignError, match="unknown option attack of the harmbench preset"):
        load("harmbench_behaviors_text_all.csv", options={"attack": "x"})


def test_specs():
    s = parse_spec("benign:xstest:data/x.csv,split=test")
    assert (s.kind, s.preset, s.source, s.options) == ("benign", "xstest", "data/x.csv", {"split": "test"})
    s = parse_spec('harmbench:"a,b.csv",targets=t.json')
    assert (s.preset, s.source, s.options) == ("harmbench", "a,b.csv", {"targets": "t.json"})
    assert parse_spec("gsm8k").source is None and parse_spec("gsm8k").preset == "gsm8k"
    assert parse_spec("jbb:f.csv").preset == "jailbreakbench"
    with pytest.raises(DeepAlignError, match="expected key=value"):
        parse_spec("harmbench:f.csv,oops")


def test_preset_names_load_their_hub_copy(monkeypatch):
    import datasets

    calls = []

    def fake(name, subset=None, split=None, **kw):
        calls.append((name, subset, split, kw))
        return datasets.Dataset.from_list([{"question": "Placeholder?", "answer": "It is 2.\n#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = open_dataset("gsm8k")
    assert calls == [("openai/gsm8k", "main", "test", {})] and ds.preset == "gsm8k" and ds.items[0].answer == "2"
    calls.clear()
    open_dataset("openai/gsm8k", DataOptions(subset="main", split="train"))  # the hub id is recognised too
    assert calls == [("openai/gsm8k", "main", "train", {})]
    calls.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, split=None, **kw: (
        calls.append(kw), datasets.Dataset.from_list([{"chosen": "\n\nHuman: q\n\nAssistant: a",
                                                       "rejected": "\n\nHuman: q\n\nAssistant: b"}]))[1])
    assert open_dataset("hh-rlhf").items[0].prompt == "q" and calls == [{"data_dir": "harmless-base"}]


def test_offline_a_preset_name_is_a_one_line_error_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DeepAlignError) as info:
        open_dataset("mmlu")
    msg = str(info.value)
    assert "\n" not in msg and "hub is not reachable (offline mode" in msg and "cais/mmlu" in msg
    assert time.monotonic() - start < 30
    with pytest.raises(DeepAlignError, match="no hub copy is known; give the file: harmbench:PATH"):
        open_dataset("harmbench")


def test_docs_table_lists_every_preset():
    text = DOCS.read_text(encoding="utf-8")
    assert presets.markdown_table() in text, "docs/data.md: paste deepalign.data.presets.markdown_table()"


def test_train_reads_presets_and_named_columns(tmp_path):
    from deepalign.training.inputs import _load_data
    from deepalign.training.options import TrainOptions

    spec = f"hh-rlhf:{FIX / 'hh_rlhf_harmless_base.jsonl'}"
    triples, _, _, data = _load_data(TrainOptions(recipe="dpo", triples=spec), DataOptions(limit=1))
    assert [t.query for t in triples] == ["placeholder question one"]
    assert "1 multi-turn" in data["triples"]["notes"][0]
    renamed = tmp_path / "pairs.csv"
    renamed.write_text("q,bad,good\nplaceholder query,placeholder harmful,placeholder refusal\n")
    (t,), _, _, _ = _load_data(TrainOptions(recipe="dpo", triples=str(renamed)),
                               DataOptions(fields=["query=q,harmful=bad", "safe=good"]))
    assert (t.query, t.harmful, t.safe) == ("placeholder query", "placeholder harmful", "placeholder refusal")
    with pytest.raises(DeepAlignError, match="--fields prompt is not a field of training data"):
        _load_data(TrainOptions(recipe="dpo", triples=str(renamed)), DataOptions(fields=["prompt=q"]))


def test_judging_published_completions_with_their_own_verdicts(tmp_path):
    from deepalign.cli import main

    out = tmp_path / "xs"
    assert main(["judge", str(FIX / "xstest_v2_completions_placeholder.csv"), "--out", str(out), "--judges", "keyword",
                 "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judges"] == ["published:xstest-human", "keyword"]
    human = next(c for c in summary["results"] if c["judge"] == "published:xstest-human")
    assert human["over_refusal"]["k"] == 1 and human["over_refusal"]["n"] == 2  # the annotators' refusal on safe prompts
    types = {c["category"] for c in summary["by_category"]}
    assert types == {"homonyms", "contrast_homonyms", "contrast_figurative_language"}
    out = tmp_path / "hb"
    assert main(["judge", str(FIX / "harmbench_completions.json"), "--out", str(out), "--judges", "keyword",
                 "--prompts", str(FIX / "harmbench_behaviors_text_all.csv"), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    hb = next(c for c in summary["results"] if c["judge"] == "published:harmbench")
    assert (hb["harmful"]["k"], hb["harmful"]["n"]) == (1, 3)
    assert {c["category"] for c in summary["by_category"]} == {"placeholder_semantic_a", "placeholder_semantic_b"}
    out = tmp_path / "pair"
    assert main(["judge", str(FIX / "derta/results/safety/pair/PAIR_result_placeholder-8B-vanilla.json"), "--out",
                 str(out), "--judges", "keyword", "--quiet"]) == 0
    kw = next(c for c in json.loads((out / "summary.json").read_text())["results"] if c["judge"] == "keyword")
    assert kw["errors"] == 1 and kw["harmful"]["n"] == 1  # no response for one goal: an error, never "safe"
