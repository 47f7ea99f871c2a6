"""An independent strict parse of multiple-choice and GSM8K answers, to check
:mod:`deepalign.data.answers` against.

It implements the same written rules (docs/data.md, "Scoring") by scanning words and
characters instead of regular expressions, and shares no code with the package, so a
disagreement between the two points at a bug in one of them:

* multiple choice: every *statement* of an answer, the last one winning: "answer/option/choice
  is|:|would be X", "pick/choose/select X", "X is correct", "is (X)", "correct answer ... is: X",
  "option X is the best/most .../...est", "(X) <text> is the correct answer", a line holding a
  letter form alone; else a letter form opening the response; else nothing;
* numbers: the last "####", else the last "answer is/answer:", else the last number.

``python tests/strict_reference.py RESULT.json ...`` prints, per DeRTa result file, the
accuracy of both parses and how often they extract the same answer.
"""

from __future__ import annotations

import json
import sys

KEYWORDS = ("answer", "option", "choice")
VERBS = ("pick", "choose", "select", "go with")
COPULAS = ("would be", "will be", "should be", "is")


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _word_at(text: str, i: int, word: str) -> bool:
    """``word`` (lower case) starts at ``i`` of the lower-cased ``text`` as a whole word."""
    end = i + len(word)
    return text.startswith(word, i) and (i == 0 or not _is_word_char(text[i - 1])) and (
        end >= len(text) or not _is_word_char(text[end]))


def _skip(text: str, i: int, chars: str = " \t\n") -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _letter(orig: str, i: int, letters: str) -> str | None:
    """A letter form starting at ``i``: (X) / [X], an upper-case X not followed by a word
    character (nor by an apostrophe or hyphen and a word character), or a lower-case x
    followed by punctuation or the end."""
    if i < len(orig) and orig[i] in "([":
        j = _skip(orig, i + 1, " ")
        if j < len(orig) and orig[j].upper() in letters:
            k = _skip(orig, j + 1, " ")
            if k < len(orig) and orig[k] in ")]":
                return orig[j].upper()
        return None
    if i < len(orig) and orig[i] == "-":
        i += 1
    if i >= len(orig):
        return None
    ch = orig[i]
    nxt = orig[i + 1] if i + 1 < len(orig) else ""
    if ch in letters:
        if nxt and _is_word_char(nxt):
            return None
        if nxt in "'’-" and i + 2 < len(orig) and _is_word_char(orig[i + 2]):
            return None
        return ch
    if ch.upper() in letters and ch.islower():
        k = _skip(orig, i + 1, " \t\n")
        if k >= len(orig) or orig[k] in ".,;:)!":
            return ch.upper()
    return None


def _after_copula(low: str, i: int) -> int | None:
    """Index after "is"/"would be"/.../":"/"=" (and an optional ":" / "=") at ``i``, else None."""
    i = _skip(low, i)
    for c in COPULAS:
        if _word_at(low, i, c):
            j = _skip(low, i + len(c))
            if j < len(low) and low[j] in ":=":
                j += 1
            return j
    if i < len(low) and low[i] in ":=":
        return i + 1
    return None


def _read_statement_letter(orig: str, low: str, j: int, letters: str) -> str | None:
    j = _skip(low, j)
    if j < len(low) and low[j] == "-":
        j = _skip(low, j + 1)
    for w in ("option", "choice"):
        if _word_at(low, j, w) and j + len(w) < len(low) and low[j + len(w)] == " ":
            j = _skip(low, j + len(w))
    return _letter(orig, j, letters)


def reference_choice(response: str, n_choices: int = 4) -> str | None:
    letters = "ABCDEFGHIJ"[:n_choices]
    orig, low = response, response.lower()
    found: list[tuple[int, str]] = []
    for i in range(len(low)):
        for kw in KEYWORDS:
            if _word_at(low, i, kw) or (_word_at(low, i, kw + "s")):
                end = i + len(kw) + (1 if low.startswith(kw + "s", i) and _word_at(low, i, kw + "s") else 0)
                j = _after_copula(low, end)
                if j is not None:
                    got = _read_statement_letter(orig, low, j, letters)
                    if got:
                        found.append((i, got))
        for verb in VERBS:
            if _word_at(low, i, verb):
                start = i - 2 if low[max(0, i - 2):i] == "i " else i
                j = _skip(low, i + len(verb), " ")
                for w in ("option", "answer", "choice"):
                    if _word_at(low, j, w):
                        j = _skip(low, j + len(w), " ")
                got = _letter(orig, j, letters) if j < len(orig) and orig[j] != "-" else None
                if got:
                    found.append((start, got))
        if low.startswith("is ", i) and _word_at(low, i, "is"):
            j = _skip(low, i + 2, " \t\n")
            if j < len(orig) and orig[j] in "([" and (got := _letter(orig, j, letters)):
                found.append((i, got))
        # "(X) is correct" / "X is the right ..." : a letter form right before "is (the) correct/right"
        if _word_at(low, i, "is") and (i == 0 or low[i - 1] in " \t\n"):
            rest = low[i + 2:].lstrip(" \t\n")
            rest = rest[4:] if rest.startswith("the ") else rest
            if rest.startswith(("correct", "right")) and (len(rest) == 5 + (rest.startswith("correct") * 2) or
                                                          not _is_word_char(rest[7 if rest.startswith("correct") else 5])):
                k = i - 1
                while k >= 0 and low[k] in " \t\n":
                    k -= 1
                if k >= 0:
                    if orig[k] in ")]" and k >= 2 and orig[k - 2] in "([" and orig[k - 1] in letters:
                        start, got = k - 2, orig[k - 1]
                    elif orig[k] in letters:
                        start, got = k, orig[k]
                    else:
                        start = got = None
                    if got and (start == 0 or orig[start - 1] in " \t\n:"):
                        found.append((start - 1 if start > 0 and orig[start - 1] in " \t\n:" else start, got))
        # "correct/right/best answer|option|choice ... is: X" within one sentence of a line
        for adj in ("correct", "right", "best"):
            if _word_at(low, i, adj):
                j = _skip(low, i + len(adj), " ")
                kw = next((k for k in KEYWORDS if _word_at(low, j, k)), None)
                if kw:
                    k = j + len(kw)
                    stop = k + 81
                    while k < len(low) and k < stop and low[k] not in ".\n":
                        for c in ("is", "would be"):
                            if _word_at(low, k, c):
                                m = _skip(low, k + len(c))
                                if m < len(low) and low[m] == ":":
                                    m += 1
                                got = _read_statement_letter(orig, low, m, letters)
                                if got:
                                    found.append((i, got))
                                    k = stop
                                    break
                        k += 1
        # "option X is|seems to be|would be the correct/best/most .../...est"
        for kw in ("option", "choice"):
            if _word_at(low, i, kw):
                j = _skip(low, i + len(kw), " ")
                got = _letter(orig, j, letters) if j < len(orig) and orig[j] != "-" else None
                if got:
                    k = j + (3 if orig[j] in "([" else 1)
                    k = _skip(low, k, " ")
                    for verb in ("seems to be", "would be", "is"):
                        if _word_at(low, k, verb):
                            m = _skip(low, k + len(verb), " ")
                            if _word_at(low, m, "the"):
                                m = _skip(low, m + 3, " ")
                                word_end = m
                                while word_end < len(low) and _is_word_char(low[word_end]):
                                    word_end += 1
                                word = low[m:word_end]
                                if word in ("correct", "right", "best", "most") or word.endswith("est"):
                                    found.append((i, got))
                            break
                    # "option (C) <text> is the correct|right|best ..." within 80 characters of a sentence
                    k2 = k
                    while k2 < len(low) and k2 < k + 81 and low[k2] not in ".\n":
                        if _word_at(low, k2, "is"):
                            m = _skip(low, k2 + 2, " ")
                            if _word_at(low, m, "the"):
                                m = _skip(low, m + 3, " ")
                            if any(_word_at(low, m, w) for w in ("correct", "right", "best")):
                                found.append((i, got))
                                break
                        k2 += 1
        # "(A) <text> is the correct answer|option|choice"
        if orig[i] in "([":
            got = _letter(orig, i, letters)
            if got and got in orig[i:i + 3]:
                k = i + 3
                while k < len(low) and k < i + 84 and low[k] not in ".\n(":
                    if _word_at(low, k, "is"):
                        m = _skip(low, k + 2, " ")
                        if _word_at(low, m, "the"):
                            m = _skip(low, m + 3, " ")
                            adj = next((w for w in ("correct", "right") if _word_at(low, m, w)), None)
                            if adj:
                                m = _skip(low, m + len(adj), " ")
                                if any(_word_at(low, m, w) for w in KEYWORDS):
                                    found.append((i, got))
                                    break
                    k += 1
    # lines that hold nothing but a letter form
    pos = 0
    for line in orig.split("\n"):
        core = line.strip(" \t")
        if core.startswith("-"):
            core = core[1:].strip(" \t")
        if core.endswith((".",)) and len(core) > 1:
            core = core[:-1]
        if len(core) == 1 and core in letters:
            found.append((pos, core))
        elif len(core) == 3 and core[0] in "([" and core[2] in ")]" and core[1] in letters:
            found.append((pos, core[1]))
        elif len(core) == 2 and core[0] in letters and core[1] in ")]":
            found.append((pos, core[0]))
        pos += len(line) + 1
    if found:
        return max(found)[1]
    # a letter form opening the response (optionally after "Option"/"Answer"/"Choice")
    j = _skip(orig, 0)
    for w in ("option", "answer", "choice"):
        if _word_at(low, j, w):
            j = _skip(orig, j + len(w), " ")
    if j < len(orig) and orig[j] == "-":
        j = _skip(orig, j + 1, " ")
        if j < len(orig) and orig[j] in letters and (j + 1 >= len(orig) or not _is_word_char(orig[j + 1])):
            return orig[j]
    if j < len(orig) and orig[j] in "([":
        return _letter(orig, j, letters)
    if j < len(orig) and orig[j] in letters:
        k = _skip(orig, j + 1)
        if k >= len(orig) or orig[k] in ").:|":
            return orig[j]
    return None


def _numbers(text: str) -> list[tuple[int, str]]:
    """(position, number text) of every number: digits with , and one decimal point, a
    leading $ or a minus sign that is not a hyphen, an optional /denominator."""
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        start = i
        if ch == "-" and (i == 0 or not (_is_word_char(text[i - 1]) or text[i - 1] == ")")) and i + 1 < len(text) and (
                text[i + 1].isdigit() or text[i + 1] in "$."):
            i += 1
        if i < len(text) and text[i] == "$":
            i += 1
        j = i
        if j < len(text) and text[j].isdigit():
            while j < len(text) and (text[j].isdigit() or text[j] == ","):
                j += 1
            if j + 1 < len(text) and text[j] == "." and text[j + 1].isdigit():
                j += 1
                while j < len(text) and text[j].isdigit():
                    j += 1
        elif j + 1 < len(text) and text[j] == "." and text[j + 1].isdigit():
            j += 1
            while j < len(text) and text[j].isdigit():
                j += 1
        else:
            i = start + 1
            continue
        if j + 1 < len(text) and text[j] == "/" and text[j + 1].isdigit():
            j += 1
            while j < len(text) and text[j].isdigit():
                j += 1
        out.append((start, text[start:j]))
        i = j
    return out


def _value(raw: str) -> float | None:
    raw = raw.replace(",", "").replace("$", "").rstrip(".")
    try:
        if "/" in raw:
            a, b = raw.split("/")
            return float(a) / float(b)
        return float(raw)
    except (ValueError, ZeroDivisionError):
        return None


def reference_number(response: str) -> float | None:
    low = response.lower()
    nums = _numbers(response)
    marks = [i for i in range(len(response)) if response.startswith("####", i)]
    for m in reversed(marks):
        j = _skip(response, m + 4)
        hit = next((n for p, n in nums if p == j or (p == j + 1 and response[j] == "$")), None)
        if hit is not None:
            return _value(hit)
    cues = []
    for i in range(len(low)):
        if _word_at(low, i, "answer"):
            j = _skip(low, i + 6, " ")
            if _word_at(low, j, "is"):
                j = _skip(low, j + 2, " ")
                if j < len(low) and low[j] == ":":
                    j = _skip(low, j + 1, " ")
            elif j < len(low) and low[j] == ":":
                j = _skip(low, j + 1, " ")
            else:
                continue
            hit = next((n for p, n in nums if p == j), None)
            if hit is not None:
                cues.append(hit)
    if cues:
        return _value(cues[-1])
    for _, n in reversed(nums):
        v = _value(n)
        if v is not None:
            return v
    return None


def _letter_of(answer: str) -> str | None:
    core = answer.strip().lstrip("-").strip().strip("()[]").rstrip(".").strip()
    return core.upper() if len(core) == 1 and core.upper() in "ABCDEFGHIJ" else None


def _final_number(solution: str) -> float | None:
    last = [line for line in solution.splitlines() if line.strip()][-1].strip()
    return _value(last[4:].strip()) if last.startswith("####") else None


def agreement(path: str) -> dict:
    """Accuracy by this parse and by deepalign's, and how often both extract the same answer."""
    import math

    from deepalign.data.loaders import load_eval_prompts
    from deepalign.data.answers import score_answer

    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    items = load_eval_prompts(path)
    ours = [score_answer(it, r["response"]) for it, r in zip(items, rows)]
    same = correct = 0
    for r, score in zip(rows, ours):
        letter = _letter_of(r["answer"])
        if letter is not None:
            got = reference_choice(r["response"], 4)
            ok = got == letter
            agree = got == score.extracted
        else:
            want = _final_number(r["answer"].lstrip("-"))
            got = reference_number(r["response"])
            ok = got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
            agree = (got is None and score.extracted is None) or (
                got is not None and score.extracted is not None and math.isclose(got, float(score.extracted), abs_tol=1e-6))
        same += agree
        correct += ok
    n = len(rows)
    return {"file": path, "n": n, "reference_accuracy": correct / n,
            "deepalign_accuracy": sum(s.correct for s in ours) / n, "same_extraction": same / n}


if __name__ == "__main__":  # pragma: no cover - a tool for published files outside the repository
    for p in sys.argv[1:]:
        a = agreement(p)
        print(f"{a['file'].rsplit('/', 1)[-1]:<56} n={a['n']}  reference {100 * a['reference_accuracy']:.1f}%  "
              f"deepalign {100 * a['deepalign_accuracy']:.1f}%  same extraction {100 * a['same_extraction']:.1f}%")
