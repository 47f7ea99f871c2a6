"""Strict answer scoring (deepalign.data.answers): letters in their common forms, the final
stated answer, GSM8K numbers, 'no extractable answer' counted as such; and agreement with an
independent parse (tests/strict_reference.py)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest

from deepalign.data.answers import extract_choice, extract_number, normalise_letter, score_answer
from deepalign.data.loaders import load_eval_prompts
from deepalign.metrics import check_answer
from deepalign.records import EvalPrompt
from strict_reference import agreement, reference_choice, reference_number

PRESETS = Path(__file__).parent / "fixtures" / "data" / "presets"
MC = EvalPrompt(id="m", prompt="q", kind="helpful", answer="C", choices=["w", "x", "y", "z"])


@pytest.mark.parametrize("answer", ["C", "-C", "(C)", "C.", "C)", "c", "Answer: C", " -(C) ", 2])
def test_reference_answers_are_normalised(answer):
    assert normalise_letter(answer, 4) == "C"


@pytest.mark.parametrize("answer", ["E", "-E", "CD", "the third", None, True, 7])
def test_non_letters_are_not_letters(answer):
    assert normalise_letter(answer, 4) is None


@pytest.mark.parametrize("response, letter", [
    ("C", "C"), ("(C)", "C"), ("-C", "C"), ("C.", "C"), ("C) y", "C"), ("(C) y is the one", "C"),
    ("Answer: C", "C"), ("answer: c", "C"), ("The correct option is (C) y.", "C"), ("The answer is C.", "C"),
    ("The correct option is:\n\n-(C) y", "C"), ("Option C | y", "C"), ("I pick C because y.", "C"),
    ("The quantity asked for is (C) y, since ...", "C"), ("Option (C) y is the correct answer.", "C"),
    ("(C) y is the correct answer. (A) w and (B) x are not.", "C"),
    ("Option C is the strongest argument.", "C"),
    # the final stated answer, not the first letter mentioned
    ("(A) looks tempting, but the answer is C.", "C"), ("The answer is (A). On reflection, the answer is (C).", "C"),
    ("The correct option is (C). Options (A) and (B) are wrong.", "C"),
    ("Working through it ...\nTherefore:\nC", "C"),
])
def test_letter_forms(response, letter):
    assert extract_choice(response, 4) == letter
    assert reference_choice(response, 4) == letter  # the independent parse reads the same
    assert check_answer(MC, response) is True


@pytest.mark.parametrize("response", [
    "Both (A) and (C) seem plausible.", "It could be A or C.", "A cell divides in two.", "I cannot tell.",
    "When you choose a method, the level α matters.",  # an article and a Greek letter are not options
    "The finding (option C) is discussed below.", "",
])
def test_no_extractable_answer_is_never_credited(response):
    assert extract_choice(response, 4) is None and reference_choice(response, 4) is None
    score = score_answer(MC, response)
    assert (score.status, score.correct) == ("no_answer", False)


def test_a_letter_found_anywhere_is_not_an_answer():
    # the old check credited C here because the letter occurs in the text
    score = score_answer(MC, "The correct option is (B) x. Option (C) is tempting but wrong.")
    assert (score.status, score.extracted, score.expected) == ("wrong", "B", "C")
    assert score_answer({"answer": "-C", "choices": ["w", "x", "y", "z"]}, "(C) y").correct  # DeRTa's -C


@pytest.mark.parametrize("response, number", [
    ("12", 12), ("so 3*4 = 12 pens.", 12), ("#### 12", 12), ("a #### 11 then #### 12", 12), ("The answer is 12.", 12),
    ("The answer is 12, not 13.", 12), ("Answer: $1,500", 1500), ("It costs $1,500.00 in all.", 1500),
    ("It went down to -3 degrees.", -3), ("It takes 2-3 hours, so 5", 5), ("3/4 of it", 0.75), ("He needs to answer:\n35/40 then 7", 7),
])
def test_number_forms(response, number):
    assert extract_number(response) == pytest.approx(number)
    assert reference_number(response) == pytest.approx(number)


def test_number_scoring_counts_no_answer():
    gsm = EvalPrompt(id="g", prompt="q", kind="helpful", answer="12")
    assert score_answer(gsm, "I cannot tell.").status == "no_answer"
    assert score_answer(gsm, "It is 13.").status == "wrong"
    assert score_answer(gsm, "So 12 pens.").status == "correct"


def test_derta_result_fixtures_agree_with_the_independent_parse():
    for path in sorted(PRESETS.glob("derta/results/helpfulness/*/*.json")):
        a = agreement(str(path))
        assert a["same_extraction"] == 1.0 and a["reference_accuracy"] == a["deepalign_accuracy"], a
    mmlu = load_eval_prompts(PRESETS / "derta/results/helpfulness/mmlu/Placeholder-8B_vanill_eval_mmlu_500.json")
    rows = [json.loads(line) for line in open(PRESETS / "derta/results/helpfulness/mmlu/Placeholder-8B_vanill_eval_mmlu_500.json")]
    status = [score_answer(it, r["response"]).status for it, r in zip(mmlu, rows)]
    assert status == ["correct", "wrong", "correct", "correct", "no_answer", "correct"]


RESULTS = os.environ.get("DEEPALIGN_DERTA_RESULTS")


@pytest.mark.skipif(not RESULTS, reason="set DEEPALIGN_DERTA_RESULTS to a checkout of RobustNLP/DeRTa's results/ "
                                        "(published files stay outside the repository)")
def test_published_derta_outputs_agree_with_the_independent_parse():
    files = sorted(glob.glob(os.path.join(RESULTS, "helpfulness", "mmlu", "*.json")) +
                   glob.glob(os.path.join(RESULTS, "helpfulness", "gsm8k", "*.json")))
    assert files
    for f in files:
        a = agreement(f)
        assert a["same_extraction"] == 1.0, a
