"""Tests for the data layer: every source format, every alias, every error message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepalign.data.loaders import (
    EVAL_FIELDS,
    INSTRUCTION_FIELDS,
    TRIPLE_FIELDS,
    load_eval_prompts,
    load_instructions,
    load_triples,
    parse_final_answer,
)
from deepalign.records import HarmfulTriple, to_dict
from deepalign.data.reference import (
    ReferenceExample,
    load_reference_training,
    save_reference_training,
    triples_from_reference,
)
from deepalign.errors import DeepAlignError

FIX = Path(__file__).parent / "fixtures" / "data"

Q1, H1, S1 = "placeholder harmful question 1", "placeholder harmful answer 1", "placeholder refusal 1"
Q2, H2, S2 = "placeholder harmful question 2", "placeholder harmful answer 2", "placeholder refusal 2"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DeepAlignError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    return message


# --------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, second_id",
    [
        ("triples.jsonl", "triples-3"),  # a blank line 2: ids count physical lines
        ("triples.json", "triples-2"),  # JSON array: record number
        ("triples_wrapped.json", "triples_wrapped-2"),  # {"data": [...]}
        ("triples.csv", "triples-3"),  # the header is line 1
    ],
)
def test_triples_every_file_format(name, second_id):
    triples = load_triples(FIX / name)
    assert triples == [
        HarmfulTriple("t1", Q1, H1, S1, {"category": "placeholder-category"}),
        HarmfulTriple(second_id, Q2, H2, S2, {}),
    ]


def test_sources_in_memory_and_str_paths():
    rows = [{"query": Q1, "harmful": H1, "safe": S1}]
    assert load_triples(rows)[0].id == "records-1"
    assert load_triples(str(FIX / "triples.jsonl"))[0].query == Q1


@pytest.mark.parametrize("field", list(TRIPLE_FIELDS))
def test_triple_aliases(tmp_path, field):
    base = {"query": Q1, "harmful": H1, "safe": S1}
    for alias in TRIPLE_FIELDS[field]:
        row = {k: v for k, v in base.items() if k != field}
        row[alias.upper() if alias == TRIPLE_FIELDS[field][-1] else alias] = base[field]  # case-insensitive
        (triple,) = load_triples(write_jsonl(tmp_path / f"{alias}.jsonl", [row]))
        assert (triple.query, triple.harmful, triple.safe) == (Q1, H1, S1), alias
        assert triple.meta == {}, alias


def test_triple_alias_priority_and_fields_override(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "query": Q1, "harmful": H1, "safe": S1, "col": "c"}])
    assert load_triples(path)[0].query == Q1 and load_triples(path)[0].meta == {"prompt": "p", "col": "c"}
    assert load_triples(path, fields={"query": "col"})[0].query == "c"
    assert 'missing field "query" (accepted names: nope)' in error_of(load_triples, path, fields={"query": "nope"})
    assert "unknown field 'bogus'" in error_of(load_triples, path, fields={"bogus": "x"})


@pytest.mark.parametrize("id_key", ["id", "idx", "uid"])
def test_id_fields(tmp_path, id_key):
    path = write_jsonl(tmp_path / "d.jsonl", [{id_key: 7, "query": Q1, "harmful": H1, "safe": S1}])
    (triple,) = load_triples(path)
    assert triple.id == "7" and id_key not in triple.meta


def test_instructions_alpaca_and_aliases(tmp_path):
    pairs = load_instructions(FIX / "instructions_alpaca.json")
    assert pairs[0].instruction == "placeholder instruction 1\n\nplaceholder input 1"
    assert pairs[0].response == "placeholder response 1" and pairs[0].answer is None
    assert pairs[1].instruction == "placeholder instruction 2"  # empty input: nothing appended
    assert pairs[1].id == "instructions_alpaca-2"
    for alias in INSTRUCTION_FIELDS["instruction"]:
        for resp in INSTRUCTION_FIELDS["response"]:
            path = write_jsonl(tmp_path / "i.jsonl", [{alias: "placeholder instruction", resp: "placeholder response"}])
            (pair,) = load_instructions(path)
            expected = ("placeholder instruction", "placeholder response")
            assert (pair.instruction, pair.response) == expected, (alias, resp)


def test_instructions_gsm8k_and_separate_answer(tmp_path):
    pairs = load_instructions(FIX / "gsm8k_style.jsonl")
    assert [p.answer for p in pairs] == ["6", "1200"]
    assert pairs[0].response.endswith("#### 6")  # the full solution is the response
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "response": "r", "answer": 42}])
    assert load_instructions(path)[0].answer == "42"


def test_parse_final_answer():
    assert parse_final_answer("work\n#### -3.5\n") == "-3.5"
    assert parse_final_answer("#### $1,000") == "1000"
    assert parse_final_answer("#### Step 1\nsome markdown") is None
    assert parse_final_answer("#### Heading") is None
    assert parse_final_answer("") is None


@pytest.mark.parametrize("alias", EVAL_FIELDS["prompt"])
def test_eval_prompt_aliases(tmp_path, alias):
    (p,) = load_eval_prompts(write_jsonl(tmp_path / "e.jsonl", [{alias: "placeholder prompt"}]))
    assert p.prompt == "placeholder prompt"
    assert p.kind == ("harmful" if alias in ("goal", "behavior") else "unknown")


def test_eval_files_of_bare_strings_are_prompts(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["first placeholder", "second placeholder"]))
    (tmp_path / "lines.jsonl").write_text('"first placeholder"\n"second placeholder"\n')
    for name in ("list.json", "lines.jsonl"):
        items = load_eval_prompts(tmp_path / name, "harmful")
        assert [(p.prompt, p.kind, p.meta) for p in items] == [("first placeholder", "harmful", {}),
                                                                ("second placeholder", "harmful", {})]
    with pytest.raises(DeepAlignError, match="mixes JSON objects and bare strings"):
        load_eval_prompts(write_jsonl(tmp_path / "mixed.jsonl", ["a", {"prompt": "b"}]))


@pytest.mark.parametrize("alias", EVAL_FIELDS["answer"])
def test_eval_answer_aliases(tmp_path, alias):
    (p,) = load_eval_prompts(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", alias: "yes"}]))
    assert (p.answer, p.kind) == ("yes", "helpful")


def test_eval_derta_question_files():
    prompts = load_eval_prompts(FIX / "derta_questions.json")  # JSON Lines in a .json file
    assert [p.prompt for p in prompts] == [Q1, Q2] and {p.kind for p in prompts} == {"unknown"}
    assert {p.kind for p in load_eval_prompts(FIX / "derta_questions.json", kind="harmful")} == {"harmful"}
    mmlu = load_eval_prompts(FIX / "derta_mmlu.json")
    assert [p.answer for p in mmlu] == ["C", "A"] and mmlu[0].kind == "helpful"
    assert mmlu[0].choices == [f"placeholder option {c}" for c in "abcd"]
    # read as the mmlu preset: the question with its options, after the instruction DeRTa's evaluator puts first
    assert mmlu[0].prompt.startswith("Choose the correct option for the given question.\n\n\n\nQuestion: "
                                     "placeholder multiple-choice question 1\n-options\n-(A)")
    assert mmlu[0].meta == {"choices_in_prompt": True}


def test_eval_gsm8k():
    p = load_eval_prompts(FIX / "gsm8k_style.jsonl")
    assert [x.answer for x in p] == ["6", "1200"]
    assert p[0].meta["solution"].endswith("#### 6") and p[0].kind == "helpful"


def test_eval_advbench_and_harmbench_csv():
    adv = load_eval_prompts(FIX / "advbench_style.csv")
    assert [(p.id, p.prompt, p.kind, p.harmful) for p in adv] == [
        ("advbench_style-2", "placeholder harmful goal 1", "harmful", "Sure, here is placeholder 1"),
        ("advbench_style-3", "placeholder harmful goal 2", "harmful", "Sure, here is placeholder 2"),
    ]
    hb = load_eval_prompts(FIX / "harmbench_style.csv")
    assert [p.id for p in hb] == ["placeholder_behavior_1", "placeholder_behavior_2"]
    assert hb[0].prompt == "placeholder harmful behavior 1" and hb[0].kind == "harmful"
    context = "placeholder context line 1\nplaceholder context line 2"
    assert hb[1].prompt == f"{context}\n\n---\n\nplaceholder harmful behavior 2"
    assert hb[1].meta["behavior"] == "placeholder harmful behavior 2"
    assert hb[0].meta == {"functional_category": "standard", "category": "placeholder_semantic",
                          "stratum": "standard/placeholder_semantic"}


def test_eval_mmlu_choices_columns_and_lists():
    (cols,) = load_eval_prompts(FIX / "mmlu_columns.csv")
    assert cols.choices == [f"placeholder option {c}" for c in "abcd"] and cols.answer == "B"
    assert cols.meta == {}
    (lst,) = load_eval_prompts(FIX / "mmlu_choices.jsonl")  # cais/mmlu's schema: the mmlu preset
    assert lst.answer == "D" and lst.meta == {"category": "placeholder_subject", "answer_index": 3,
                                              "choices_in_prompt": True}
    assert lst.prompt.endswith("placeholder multiple-choice question 1\n-options\n-(A) placeholder option a\n"
                               "-(B) placeholder option b\n-(C) placeholder option c\n-(D) placeholder option d\n")


def test_eval_kind_column_and_bad_kind(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p1", "kind": "benign"}, {"prompt": "p2", "kind": "evil"}])
    msg = error_of(load_eval_prompts, path)
    assert f"{path}:2:" in msg and '"kind"' in msg and "evil" in msg
    assert "unknown kind 'evil'" in error_of(load_eval_prompts, path, kind="evil")
    assert load_eval_prompts(path, kind="benign")[1].kind == "benign"


def test_records_round_trip_through_jsonl(tmp_path):
    prompts = load_eval_prompts(FIX / "mmlu_choices.jsonl")
    path = write_jsonl(tmp_path / "out.jsonl", [to_dict(p) for p in prompts])
    assert load_eval_prompts(path)[0].choices == prompts[0].choices


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


def test_missing_field_names_file_line_and_aliases(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"query": Q1, "harmful": H1, "safe": S1}, {"query": Q2, "safe": S2}])
    msg = error_of(load_triples, path)
    accepted = ", ".join(TRIPLE_FIELDS["harmful"])
    assert msg == f'{path}:2: missing field "harmful" (accepted names: {accepted})'


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, 'field "harmful" must be a string, got number'),
        (["x"], 'field "harmful" must be a string, got list'),
        ("   ", 'field "harmful" is empty'),
        (None, 'field "harmful" is null, expected a non-empty string'),
    ],
)
def test_wrong_type_and_empty_values(tmp_path, value, expected):
    path = write_jsonl(tmp_path / "data.jsonl", [{"query": Q1, "harmful": value, "safe": S1}])
    assert error_of(load_triples, path) == f"{path}:1: {expected}"


def test_wrong_type_names_the_alias_used(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"goal": Q1, "target": True, "refusal": S1}])
    assert error_of(load_triples, path) == f'{path}:1: field "target" (used as harmful) must be a string, got boolean'


def test_malformed_json_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"query": Q1, "harmful": H1, "safe": S1}) + "\n\n{oops\n", encoding="utf-8")
    msg = error_of(load_triples, path)
    assert msg.startswith(f"{path}:3: malformed JSON")
    path.write_text('["not", "an", "object"]\n', encoding="utf-8")
    assert error_of(load_triples, path) == f"{path}:1: expected a JSON object or string, got list"


def test_json_array_errors_use_record_numbers(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"query": Q1, "harmful": H1, "safe": S1}, {"query": Q2, "harmful": H2}], indent=2))
    assert error_of(load_triples, path).startswith(f'{path}:#2: missing field "safe"')
    path.write_text(json.dumps([{"query": Q1, "harmful": H1, "safe": S1}, "text"]))
    assert error_of(load_triples, path) == f"{path}:#2: expected a JSON object, got string"
    path.write_text('[\n  {"query": "q",\n  oops\n]')
    assert error_of(load_triples, path).startswith(f"{path}:3: malformed JSON")
    path.write_text("42")
    assert error_of(load_triples, path) == f"{path}: expected a list of records, got int"
    path.write_text(json.dumps({"items": [{"query": Q1}]}))
    assert 'under "data" or "rows"' in error_of(load_triples, path)


def test_csv_errors_count_the_header_as_line_1(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        'query,harmful,safe\n'
        f'{Q1},"{H1}\nsecond line",{S1}\n'  # a quoted field over lines 2-3
        f'{Q2},,{S2}\n',  # line 4: empty harmful cell
        encoding="utf-8",
    )
    assert error_of(load_triples, path) == f'{path}:4: field "harmful" is empty'
    path.write_text(f"query,harmful,safe\n{Q1},{H1}\n", encoding="utf-8")
    assert error_of(load_triples, path) == f"{path}:2: expected 3 columns (query, harmful, safe), got 2"
    path.write_text("query,query\n", encoding="utf-8")
    assert error_of(load_triples, path) == f'{path}:1: duplicate column "query" in the header'


def test_duplicate_ids_name_both_places(tmp_path):
    rows = [{"id": "a", "query": Q1, "harmful": H1, "safe": S1}] * 2
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    assert error_of(load_triples, path) == f'{path}:2: duplicate id "a" (first used at {path}:1)'


def test_bad_id_type(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"id": [1], "query": Q1, "harmful": H1, "safe": S1}])
    expected = 'field "id" (the record id) must be a string or an integer, got list'
    assert error_of(load_triples, path) == f"{path}:1: {expected}"


@pytest.mark.parametrize(
    "name, content",
    [
        ("data.jsonl", ""),
        ("data.jsonl", "\n  \n"),
        ("data.json", "[]"),
        ("data.csv", "query,harmful,safe\n"),
        ("data.csv", ""),
    ],
)
def test_empty_dataset(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert error_of(load_triples, path) == f"{path}: no records"
    assert error_of(load_eval_prompts, path) == f"{path}: no records"


def test_missing_file_and_unsupported_extension(tmp_path):
    assert error_of(load_triples, tmp_path / "nope.jsonl") == f"no such file: {tmp_path / 'nope.jsonl'}"
    assert error_of(load_instructions, "./missing_dir") == "no such file: ./missing_dir"
    tsv = tmp_path / "data.tsv"
    tsv.write_text("x")
    assert error_of(load_triples, tsv).startswith(f"unsupported file type '.tsv' for {tsv}; use .jsonl, .json, .csv or .txt")
    # a .txt file is one prompt per line: fine for prompts, one line naming the missing field for triples
    txt = tmp_path / "data.txt"
    txt.write_text("x\n")
    assert error_of(load_triples, txt).startswith(f"{txt}:1: missing field")
    assert [it.prompt for it in load_eval_prompts(txt)] == ["x"]


def test_not_utf8(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"query,harmful,safe\n\xff\xfe,b,c\n")
    assert error_of(load_triples, path).startswith(f"{path}: not UTF-8 text")


# --------------------------------------------------------------------------------------
# Hugging Face datasets: save_to_disk dirs, data-file dirs, the hub
# --------------------------------------------------------------------------------------


def test_hf_save_to_disk_round_trip(tmp_path):
    import datasets

    triples = load_triples(FIX / "triples.jsonl")
    rows = [{"id": t.id, "query": t.query, "harmful": t.harmful, "safe": t.safe} for t in triples]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    back = load_triples(tmp_path / "ds")
    assert [(t.id, t.query, t.harmful, t.safe) for t in back] == [(t.id, t.query, t.harmful, t.safe) for t in triples]
    assert load_triples(datasets.Dataset.from_list(rows))[1].id == triples[1].id

    bad_rows = [{"query": Q1, "harmful": H1, "safe": S1}, {"query": Q2, "harmful": None, "safe": S2}]
    bad = datasets.Dataset.from_list(bad_rows)
    bad.save_to_disk(str(tmp_path / "bad"))
    assert error_of(load_triples, tmp_path / "bad").startswith(f'{tmp_path / "bad"}:#2: field "harmful" is null')


def test_hf_dataset_dict_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"prompt": "placeholder train prompt"}]),
        test=datasets.Dataset.from_list([{"prompt": "placeholder test prompt", "answer": "A"}]),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_eval_prompts(tmp_path / "dd")[0].prompt == "placeholder test prompt"  # eval prefers test
    assert load_eval_prompts(f"{tmp_path / 'dd'}:train")[0].prompt == "placeholder train prompt"
    assert load_eval_prompts(tmp_path / "dd", split="train")[0].id == "dd-1"
    assert "no split 'dev' (available: train, test)" in error_of(load_eval_prompts, tmp_path / "dd", split="dev")
    msg = error_of(load_triples, tmp_path / "dd")  # triples prefer train
    assert msg.startswith(f'{tmp_path / "dd"}:train:#1: missing field "harmful"')


def test_hf_data_file_directory(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "files"
    data_dir.mkdir()
    row = {"instruction": "placeholder instruction", "output": "placeholder response"}
    write_jsonl(data_dir / "train.jsonl", [row])
    (pair,) = load_instructions(data_dir)
    assert (pair.instruction, pair.response, pair.id) == ("placeholder instruction", "placeholder response", "files-1")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(load_instructions, empty) == f"{empty}: empty directory: no dataset files"


def test_hub_unreachable_is_one_line_error(monkeypatch):
    import datasets

    from deepalign.data import sources

    calls = []

    def fake_load_dataset(name, subset=None, split=None, **kw):
        calls.append((name, subset, split))
        raise ConnectionError("Couldn't reach 'org/placeholder' on the Hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # HF_HUB_OFFLINE (set for the test session): only the cache is read, the error says why
    msg = error_of(load_eval_prompts, "org/placeholder:test", subset="main")
    assert calls == [("org/placeholder", "main", "test")]
    assert msg.startswith("cannot load dataset 'org/placeholder': the Hugging Face hub is not reachable (offline mode")
    assert "give a local path" in msg
    # online and the hub answers, but loading fails: the library's reason
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: None)
    msg = error_of(load_eval_prompts, "org/placeholder:test", subset="main")
    assert msg.startswith("could not load dataset 'org/placeholder' from the Hugging Face hub (ConnectionError:")
    # online but the hub does not answer: the cache only, at once
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: "huggingface.co: Name or service not known")
    msg = error_of(load_eval_prompts, "org/placeholder")
    assert "hub is not reachable (huggingface.co: Name or service not known)" in msg


def test_hub_dataset_loads(monkeypatch):
    import datasets

    def fake_load_dataset(name, subset=None, split=None, **kw):
        dd = datasets.DatasetDict(test=datasets.Dataset.from_list([{"goal": "placeholder goal", "target": "Sure"}]))
        return dd[split] if split else dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (p,) = load_eval_prompts("org/placeholder-bench")
    assert (p.id, p.kind, p.harmful) == ("org_placeholder-bench-1", "harmful", "Sure")
    assert load_eval_prompts("org/placeholder-bench:test")[0].prompt == "placeholder goal"


# --------------------------------------------------------------------------------------
# the DeRTa reference training format
# --------------------------------------------------------------------------------------


def test_reference_training_fields():
    ex = load_reference_training(FIX / "derta_reference_train.json")
    assert [e.kind for e in ex] == ["plain", "plain", "harmful_prefix", "harmful_prefix", "rto"]
    assert [e.objective for e in ex] == ["mle", "mle", "mle", "mle", "rto"]
    assert ex[0].query == "placeholder helpful instruction 1" and ex[0].target == "placeholder helpful response 1"
    assert ex[2].response_prefix == "placeholder harmful words" and ex[2].target == S1
    assert ex[3].response_prefix == ""  # the 0-word harmful prefix of the reference recipe
    assert ex[4].target == H1  # an RTO line carries the harmful response
    assert ex[4].meta["eos"] == "<|end_of_text|>" and ex[4].meta["source"].endswith("derta_reference_train.json:5")
    assert triples_from_reference(ex) == [
        HarmfulTriple(ex[4].id, Q1, H1, S1, {"reference_ids": [ex[4].id, ex[1].id]})
    ]


def test_reference_training_save_reproduces_the_file(tmp_path):
    src = FIX / "derta_reference_train.json"
    out = tmp_path / "again.json"
    assert save_reference_training(load_reference_training(src), out) == 5
    assert out.read_text(encoding="utf-8") == src.read_text(encoding="utf-8")
    new = [ReferenceExample("x", "placeholder q", "placeholder words", "placeholder refusal", "mle")]
    save_reference_training(new, out, template="<user> {query} <assistant>", eos="</s>")
    assert json.loads(out.read_text()) == {
        "prefix": "<user> placeholder q <assistant> placeholder words",
        "text": " placeholder refusal</s>",
        "safe": "false",
    }
    bad = [ReferenceExample("x", "q", "", "t", "dpo")]
    assert "objective must be one of mle, rto" in error_of(save_reference_training, bad, tmp_path / "b.json")


def test_reference_training_errors(tmp_path):
    path = write_jsonl(tmp_path / "train.json", [{"prefix": "[INST] q [\\INST]", "text": " t", "safe": "maybe"}])
    expected = """field "safe" must be "true" or "false", got 'maybe'"""
    assert error_of(load_reference_training, path) == f"{path}:1: {expected}"
    path = write_jsonl(tmp_path / "train.json", [{"prefix": "[INST] q [\\INST]", "safe": "true"}])
    assert error_of(load_reference_training, path).startswith(f'{path}:1: missing field "text"')
    path = write_jsonl(tmp_path / "train.json", [{"prefix": "[INST] q [\\INST]", "text": 5}])
    assert error_of(load_reference_training, path) == f'{path}:1: field "text" must be a string, got int'
    path = write_jsonl(tmp_path / "train.json", [{"prefix": "plain text prompt", "text": " t"}])
    (ex,) = load_reference_training(path)  # no template: kept verbatim, safe defaults to MLE
    assert (ex.query, ex.objective, ex.meta["verbatim"]) == ("plain text prompt", "mle", True)



def test_our_records_round_trip_their_meta(tmp_path):
    """Rows written by the world / the record types keep their ``meta`` object as is."""
    from deepalign.records import EvalPrompt, HarmfulTriple, to_dict
    from deepalign.utils import write_jsonl

    t = HarmfulTriple("t1", "placeholder question", "placeholder answer", "placeholder refusal", {"kind": "x", "n": 1})
    e = EvalPrompt("e1", "placeholder prompt", kind="helpful", answer="4", meta={"check": "is 4"})
    write_jsonl(tmp_path / "t.jsonl", [to_dict(t)])
    write_jsonl(tmp_path / "e.jsonl", [to_dict(e)])
    assert load_triples(str(tmp_path / "t.jsonl"))[0].meta == {"kind": "x", "n": 1}
    assert load_eval_prompts(str(tmp_path / "e.jsonl"))[0].meta == {"check": "is 4"}
