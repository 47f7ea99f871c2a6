"""Strict answer scoring: what a response answers, and whether that is the item's answer.

One home for every answer format the presets know:

* **Multiple choice** (MMLU, DeRTa's MMLU file): the option letter the response *states*,
  the last statement winning (``"... so the answer is (B)"`` after discussing (C) gives B).
  A statement is ``answer is X`` / ``answer: X`` / ``option is (X)`` / ``choice: X`` /
  ``I choose X`` / ``(X) is correct`` / ``... is (X)`` (a bracketed letter after "is"), or a line holding nothing but a letter form (``C``,
  ``(C)``, ``-C``, ``C.``, ``C)``). With no statement, a response that *starts* with a letter
  form (``(C) 12 cm``, ``C. 12 cm``, ``C``) answers that letter. Anything else has **no
  extractable answer**: it is counted as such, never credited because a letter appears
  somewhere in the text.
* **Numbers** (GSM8K): the last ``#### n``; else the last ``answer is n`` / ``answer: n`` (on
  one line);
  else the last number of the response (GSM8K's final-number convention). ``$``, thousands
  separators and a trailing ``.`` are dropped; ``3/4`` is a fraction.
* **Phrases** (the embedded world's helpful items): the normalised answer phrase occurs in
  the normalised response.

Reference answers are normalised the same way: DeRTa's result files write MMLU answers as
``-C``; ``(C)``, ``C.``, ``Answer: C`` and an option index all become ``C``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["LETTERS", "Score", "normalise_letter", "choices_in_text", "format_options", "extract_choice", "extract_number", "to_number", "score_answer",
           "parse_final_answer"]

LETTERS = "ABCDEFGHIJ"

#: a reference answer written as a letter: "C", "-C", "(C)", "C.", "C)", "Answer: C", "[C]"
_ANSWER_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*)?-?\s*[(\[]?\s*([A-Ja-j])\s*[)\].:]?\s*$", re.IGNORECASE)
_FINAL_ANSWER = re.compile(r"^####\s*\$?\s*(-?[\d,]*\.?\d+(?:/\d+)?)\s*$")


@dataclass(frozen=True)
class Score:
    """The outcome of checking one response: ``status`` is ``correct``, ``wrong`` or
    ``no_answer`` (nothing could be extracted); ``extracted`` what was read from the response."""

    status: str
    extracted: str | None
    expected: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"


def parse_final_answer(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution, else None.

    The last non-empty line must be ``#### n`` with ``n`` a number; thousands separators and
    a leading ``$`` are removed (``"#### $1,200"`` gives ``"1200"``). A markdown heading such
    as ``#### Step 1`` is not an answer.
    """
    lines = [line for line in solution.splitlines() if line.strip()]
    match = _FINAL_ANSWER.match(lines[-1].strip()) if lines else None
    return match.group(1).replace(",", "") if match else None


def normalise_letter(answer: Any, n_choices: int | None = None) -> str | None:
    """``answer`` as an option letter (``"-C"`` -> ``"C"``), or None when it is not one
    (or names an option beyond ``n_choices``)."""
    if isinstance(answer, bool) or answer is None:
        return None
    if isinstance(answer, int):
        letter = LETTERS[answer] if 0 <= answer < len(LETTERS) else None
    else:
        m = _ANSWER_LETTER.match(str(answer))
        letter = m.group(1).upper() if m else None
    if letter is None or (n_choices is not None and LETTERS.index(letter) >= n_choices):
        return None
    return letter


_OPTION_LINE = re.compile(r"^\s*-?\s*\(([A-Z])\)\s?(.*)$")
_OPTIONS_HEADER = ("-options", "options:", "options")


def choices_in_text(prompt: str) -> list[str] | None:
    """Options written as ``-(A) text`` lines after a ``-options`` line (DeRTa's MMLU file)."""
    lines = prompt.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().lower() in _OPTIONS_HEADER)
    except StopIteration:
        return None
    out = []
    for line in lines[start + 1:]:
        match = _OPTION_LINE.match(line)
        if match is None:
            if line.strip():
                break
            continue
        if match.group(1) != "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(out)]:
            return None
        out.append(match.group(2).strip())
    return out if len(out) >= 2 else None


def format_options(question: str, choices: list[str]) -> str:
    """``question`` followed by its options in the layout of DeRTa's MMLU file
    (``-options`` then one ``-(A) text`` line per option), which :func:`choices_in_text` reads back."""
    lines = [question.rstrip(), "-options"] + [f"-({LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\n"


def _choice_patterns(letters: str) -> list[re.Pattern]:
    """The statement forms. Words match in any case (``(?i:...)``), option letters only as
    written: an upper-case letter, or a lower-case one when bracketed or followed by
    punctuation, so "choose a method" or "level α" never read as option A."""
    up = f"[{letters}]"
    either = f"[{letters}{letters.lower()}]"
    kw = "(?i:answer|option|choice)"
    slot = rf"(?:[(\[]\s*({either})\s*[)\]]|-?({up})\b(?![''-]\w)|({either})(?=\s*(?:[.,;:)!]|$)))"
    then = r"(?:(?i:option|choice)\s+)?"
    return [
        re.compile(rf"\b{kw}s?\s*(?:(?i:is|would be|will be|should be)\s*[:=]?|[:=])\s*-?\s*{then}{slot}", re.MULTILINE),
        # "... is (B) <option text>": the question restated, then the bracketed letter
        re.compile(rf"\bis\s+[(\[]({up})[)\]]", re.MULTILINE),
        re.compile(rf"\b(?:(?i:i)\s+(?:(?i:would)\s+)?)?(?i:pick|choose|select|go with)\s+(?:{kw}\s+)?{slot}",
                   re.MULTILINE),
        re.compile(rf"(?:^|[\s:])[(\[]?({up})[)\]]?\s+is\s+(?:the\s+)?(?i:correct|right)\b", re.MULTILINE),
        # "the correct option for the given question is: -(D) ..."
        re.compile(rf"\b(?i:correct|right|best)\s+{kw}\b[^.\n]{{0,80}}?\b(?i:is|would be)\s*:?\s*-?\s*{then}{slot}",
                   re.MULTILINE),
        # "Option C is the strongest argument ...", "Option D seems to be the most suitable answer"
        re.compile(rf"\b(?i:option|choice)\s*[(\[]?({up})[)\]]?\s+(?i:is|seems to be|would be)\s+(?i:the)\s+"
                   rf"(?i:correct|right|best|most\s+\w+|\w+est)\b", re.MULTILINE),
        # "(A) <option text> is the correct answer" (a parenthetical "(option D)" is discussion, not a statement)
        re.compile(rf"[(\[]({up})[)\]][^.\n(]{{0,80}}?\bis\s+the\s+(?i:correct|right)\s+{kw}\b", re.MULTILINE),
        # "Option (C) <option text> is the correct answer"
        re.compile(rf"\b(?i:option|choice)\s*[(\[]?({up})[)\]]?[^.\n]{{0,80}}?\bis\s+(?:(?i:the)\s+)?"
                   rf"(?i:correct|right|best)\b", re.MULTILINE),
        # a line holding nothing but a letter form
        re.compile(rf"^[ \t]*[-(\[]?[ \t]*({up})[ \t]*[)\].]?[ \t]*$", re.MULTILINE),
    ]


def _leading_letter(response: str, letters: str) -> str | None:
    up = f"[{letters}]"
    m = re.match(rf"\s*(?:(?i:option|choice|answer)\s+)?-?\s*(?:[(\[]\s*({up})\s*[)\]]|({up})\s*(?:[).:|]|$))"
                 rf"|\s*-\s*({up})\b", response)
    if m is None:
        return None
    return next(g for g in m.groups() if g)


def extract_choice(response: str, n_choices: int = 4) -> str | None:
    """The option letter ``response`` states as its answer (the last statement), or None.

    >>> extract_choice("The correct option is (C). Options (A) and (B) are wrong.")
    'C'
    >>> extract_choice("(A) looks tempting, but the answer is B.")
    'B'
    >>> extract_choice("It could be A or C.") is None
    True
    """
    letters = LETTERS[: max(1, min(n_choices, len(LETTERS)))]
    found: list[tuple[int, str]] = []
    for pattern in _choice_patterns(letters):
        for m in pattern.finditer(response):
            letter = next(g for g in m.groups() if g)
            found.append((m.start(), letter.upper()))
    if found:
        return max(found)[1]
    return _leading_letter(response, letters)


# a minus sign only where it cannot be a hyphen ("2-3 hours")
_NUMBER = r"(?:(?<![\w)])-)?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?"


def to_number(text: str) -> float | None:
    """A number written as in GSM8K answers (``$1,200``, ``18.``, ``-3``, ``3/4``), else None."""
    text = text.replace(",", "").replace("$", "").replace(" ", "").strip().rstrip(".")
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(response: str) -> float | None:
    """The final numeric answer: the last ``#### n``, else the last ``answer is n`` /
    ``answer: n``, else the last number of the response; None when there is no number."""
    for pattern in (rf"####\s*({_NUMBER})", rf"answer[ \t]*(?:is|:)[ \t]*:?[ \t]*({_NUMBER})"):
        hits = re.findall(pattern, response, re.IGNORECASE)
        if hits:
            return to_number(hits[-1])
    hits = re.findall(_NUMBER, response)
    for raw in reversed(hits):
        value = to_number(raw)
        if value is not None:
            return value
    return None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def score_answer(item: Any, response: str) -> Score | None:
    """Check ``response`` against the answer of ``item`` (an :class:`EvalPrompt` or a dict
    with ``answer`` and ``choices``); None when the item has no answer."""
    get = item.get if isinstance(item, dict) else lambda k, d=None: getattr(item, k, d)
    answer, choices = get("answer"), get("choices")
    if answer is None or str(answer).strip() == "":
        return None
    response = response or ""
    if choices:
        expected = normalise_letter(answer, len(choices))
        if expected is None:  # the answer is the text of an option
            texts = [_norm(str(c)) for c in choices]
            if _norm(str(answer)) in texts:
                expected = LETTERS[texts.index(_norm(str(answer)))]
        if expected is not None:
            got = extract_choice(response, len(choices))
            if got is None:
                return Score("no_answer", None, expected)
            return Score("correct" if got == expected else "wrong", got, expected)
    expected_text = str(answer).strip()
    target = to_number(expected_text)
    if target is not None:
        got_n = extract_number(response)
        if got_n is None:
            return Score("no_answer", None, expected_text)
        ok = math.isclose(got_n, target, rel_tol=1e-6, abs_tol=1e-6)
        return Score("correct" if ok else "wrong", _format_number(got_n), expected_text)
    ok = f" {_norm(expected_text)} " in f" {_norm(response)} "
    return Score("correct" if ok else "wrong", None, expected_text)
