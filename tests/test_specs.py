"""The one reader of each kind of small text: comma lists, yes/no words, and the preset spec
``[preset:]SOURCE[,key=value...]`` that dataset and label presets share."""

from __future__ import annotations

import pytest

from deepalign.errors import DeepAlignError
from deepalign.registry import FALSE_WORDS, TRUE_WORDS, SpecArgs, split_args, split_list, truth


def test_one_comma_list_reader_for_specs_and_words():
    # judge / attack lists keep a quoted comma (with its quotes, for the spec parser after them)
    assert split_list('llm:x:system="a, b",keyword') == ['llm:x:system="a, b"', "keyword"]
    # an escaped quote inside quotes does not end them
    specs = split_list('llm:x:system="say \\"hi, there\\"",keyword')
    assert specs == ['llm:x:system="say \\"hi, there\\""', "keyword"]
    assert split_args(specs[0].split(":", 2)[2], ":", specs[0]) == ['system=say "hi, there"']
    # words: a string or a list of strings, each possibly comma-separated, blanks dropped
    assert split_list(["sorry,i", " cannot ", ""]) == ["sorry", "i", "cannot"]
    assert split_list(None) == [] and split_list(",,") == []


def test_one_set_of_yes_no_words():
    assert {"1", "true", "yes", "on", "1.0"} <= TRUE_WORDS and {"0", "false", "no", "off", "0.0"} <= FALSE_WORDS
    assert [truth(v) for v in ("Yes", " ON ", 1, 1.0, True, "0.0", "off", 0, False)] == [True] * 5 + [False] * 4
    assert truth("perhaps") is None and truth("") is None and truth(None) is None
    # spec flags read the same words as data cells
    args = SpecArgs.parse("x:system=1.0", "system=1.0", ":", "judge")
    assert args.flag("system") is True
    with pytest.raises(DeepAlignError, match="must be true or false"):
        SpecArgs.parse("x:system=perhaps", "system=perhaps", ":", "judge").flag("system")


# -- the preset spec and cell readers that dataset and label presets share -----------------------

import csv  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from deepalign.data import presets  # noqa: E402
from deepalign.data.datasets import parse_spec as parse_dataset_spec  # noqa: E402
from deepalign.data.loaders import load_eval_prompts  # noqa: E402
from deepalign.evaluation import validation  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "data" / "presets"


def _labels_csv(path: Path, labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "response", "label"])
        w.writerows([f"placeholder request {i}", f"placeholder answer {i}", label] for i, label in enumerate(labels))
    return path


def test_labels_and_datasets_take_one_spec_grammar(tmp_path):
    labels = _labels_csv(tmp_path / "l.csv", ["1", "0"] * 6)
    # the same option twice is refused in both (a labels spec used to keep the last one)
    for parse in (parse_dataset_spec, lambda s: validation.load_labels(s)):
        with pytest.raises(DeepAlignError, match="option field given twice"):
            parse(f"{labels},field=harmful,field=refusal")
    # a preset's name (or alias) before the colon, the name alone for its hub copy, in both tables
    s = parse_dataset_spec("jbb:f.csv,split=test")
    assert (s.preset, s.source, s.options) == ("jailbreakbench", "f.csv", {"split": "test"})
    s = parse_dataset_spec("xstest")
    assert (s.preset, s.source) == ("xstest", None)
    from deepalign.data.specs import parse_spec

    s = parse_spec(f'xstest-completions:"{labels}",split=gpt4', validation.TABLE, what="labels")
    assert (s.preset, s.source, s.options) == ("xstest-completions", str(labels), {"split": "gpt4"})
    assert parse_spec("jbb-judges", validation.TABLE, what="labels").source is None
    # an existing path is a path, even when it starts like a preset's name
    odd = tmp_path / "gsm8k"
    odd.write_text("{}\n")
    assert parse_dataset_spec(str(odd)).preset is None


def test_labels_and_datasets_read_yes_no_cells_alike(tmp_path):
    # a labels file may write its labels with any of the yes/no words (on/off too)
    data = validation.load_labels(str(_labels_csv(tmp_path / "on.csv", ["on", "off"] * 6)))
    assert [r.label for r in data.records[:2]] == [True, False]
    # a word neither knows is the same one-line error in a labels file and a dataset
    bad = _labels_csv(tmp_path / "bad.csv", ["1", "0"] * 5 + ["perhaps"])
    with pytest.raises(DeepAlignError, match=r'bad.csv:12: label "label" has the value \'perhaps\', which this '
                                             r"file does not use \(known: 1/0, 1.0/0.0, true/false, yes/no, on/off"):
        validation.load_labels(str(bad))
    rows = [json.loads(line) for line in (FIX / "beavertails.jsonl").read_text().splitlines()]
    rows[0]["is_safe"] = "perhaps"
    beaver = tmp_path / "beavertails.jsonl"
    beaver.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DeepAlignError, match=r'field "is_safe" has the value \'perhaps\', which this file does not '
                                             r"use \(known: 1/0"):
        load_eval_prompts(beaver, preset="beavertails")
    assert presets.get("beaver").name == "beavertails"


def test_the_reference_files_safe_field_reads_the_same_yes_no_words(tmp_path):
    from deepalign.data.reference import load_reference_training

    path = tmp_path / "train.json"
    rows = [{"prefix": "placeholder prompt", "text": " placeholder", "safe": safe} for safe in ("TRUE", "yes", 1, "0")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [ex.objective for ex in load_reference_training(path)] == ["rto", "rto", "rto", "mle"]
