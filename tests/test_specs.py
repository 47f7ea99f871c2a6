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
