"""``deepalign judge --validate``: the label presets in their real schemas (placeholder text),
the numbers against a hand-computed table, per-category results, published judges' columns,
bad labels files (one line, exit 2, nothing written), resuming an interrupted validation, and
the verdict cache of ``deepalign judge`` on a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deepalign.cli import main
from deepalign.errors import DeepAlignError
from deepalign.metrics.agreement import read_validation
from deepalign.evaluation.validation import MIN_ROWS, load_labels, validate_judges
from deepalign.judges.base import Judge
from deepalign.judges.registry import JUDGES

LABELS = Path(__file__).parent / "fixtures" / "data" / "labels"
BEHAVIOURS = Path(__file__).parent / "fixtures" / "data" / "presets" / "harmbench_behaviors_text_all.csv"


def test_jbb_judge_comparison_through_the_cli(tmp_path, capsys):
    out = tmp_path / "val"
    assert main(["judge", "--validate", f"jbb-judges:{LABELS / 'judge-comparison.csv'}", "--judges", "keyword",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "validation.json").read_text())
    assert (result["preset"], result["field"], result["rows"], result["positives"]) == ("jbb-judges", "harmful", 12, 6)
    k = result["judges"]["keyword"]["overall"]
    # the fixture: 5 compliant (label 1) and 5 "sorry" refusals (label 0) the keyword judge gets right, one
    # harmful answer that says "illegal" (a false refusal) and one refusal without a listed phrase
    assert (k["tp"], k["fp"], k["fn"], k["tn"], k["no_verdict"]) == (5, 1, 1, 5, 0)
    assert k["agreement"] == pytest.approx(10 / 12) and k["kappa"] == pytest.approx(2 / 3)
    assert k["precision"] == pytest.approx(5 / 6) and k["recall"] == pytest.approx(5 / 6)
    assert k["f1"] == pytest.approx(5 / 6) and len(k["agreement_ci95"]) == 2 and len(k["kappa_ci95"]) == 2
    assert set(result["published"]) == {"published:harmbench_cf", "published:gpt4_cf", "published:llamaguard2_cf",
                                        "published:llama3_cf"}
    assert result["published"]["published:gpt4_cf"]["overall"]["kappa"] == 1.0
    md = (out / "validation.md").read_text()
    assert "| `keyword` | 12 | 0.833 [" in md and "percentile bootstrap" in md
    assert read_validation(out)["keyword"]["kappa"] == pytest.approx(2 / 3)


def test_harmbench_validation_set_and_xstest_completions(tmp_path):
    result = validate_judges(f"{LABELS / 'text_behaviors_val_set.json'},behaviors={BEHAVIOURS}", "keyword",
                             tmp_path / "hb")
    assert result["preset"] == "harmbench-val" and result["rows"] == 12 and result["positives"] == 6
    k = result["judges"]["keyword"]
    assert (k["overall"]["tp"], k["overall"]["fp"], k["overall"]["fn"], k["overall"]["tn"]) == (5, 1, 1, 5)
    assert set(k["by_category"]) == {"placeholder_semantic_a", "placeholder_semantic_b"}
    # HarmBench's own AdvBench column is GCG's keyword list: it agrees with ours row for row
    assert result["published"]["published:advbench"]["overall"]["kappa"] == k["overall"]["kappa"]
    assert "published:PAIR_gpt-4-0613" not in result["published"]  # not a 0/1 column
    data = load_labels(f"harmbench-val:{LABELS / 'text_behaviors_val_set.json'},behaviors={BEHAVIOURS}")
    ctx = next(r.item for r in data.records if r.item.meta["behavior_id"] == "placeholder_contextual_1")
    assert ctx.meta["behavior"] == "placeholder contextual behavior one" and ctx.meta["context"].startswith(
        "placeholder context paragraph one")  # what HarmBench's classifier reads
    x = validate_judges(str(LABELS / "xstest_v2_completions_placeholder.csv"), "keyword,keyword:nocase",
                        tmp_path / "xs")
    assert x["preset"] == "xstest-completions" and x["field"] == "refusal" and x["positives"] == 8
    assert set(x["judges"]["keyword"]["by_category"]) == {"homonyms", "contrast_homonyms", "safe_targets",
                                                          "contrast_safe_targets"}
    # "It is not appropriate" (a refusal) has no GCG phrase; partial refusals count as refusals
    assert x["judges"]["keyword"]["overall"]["fn"] == 2 and x["judges"]["keyword"]["overall"]["fp"] == 0


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_bad_labels_files_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    rows = [[f"placeholder request {i}", "Sorry, no." if i % 2 else "Here it is.", i % 2] for i in range(12)]
    no_label = write_csv(tmp_path / "no_label.csv", ["prompt", "response", "verdict"], rows)
    odd = write_csv(tmp_path / "odd.csv", ["prompt", "response", "label"], rows[:5] + [["p", "r", "perhaps"]] + rows[6:])
    few = write_csv(tmp_path / "few.csv", ["prompt", "response", "label"], rows[:MIN_ROWS - 1])
    xs = tmp_path / "xs.csv"
    xs.write_text((LABELS / "xstest_v2_completions_placeholder.csv").read_text().replace(
        "2_full_refusal\n", "9_unclear\n", 1))
    cases = [
        ([str(no_label)], "no label column (expected one of label"),
        ([str(odd)], "odd.csv:7: label \"label\" has the value 'perhaps'"),
        ([str(few)], f"{MIN_ROWS - 1} labelled rows; at least {MIN_ROWS}"),
        ([str(xs)], "which XSTest does not use"),
        ([f"{tmp_path / 'missing.csv'}"], "no such file"),
        ([f"jbb-judges:{tmp_path / 'odd.csv'}"], "not in the JailbreakBench judge_comparison schema"),
        ([f"{LABELS / 'judge-comparison.csv'},flavour=x"], "unknown option flavour"),
        ([f"{no_label},field=toxicity"], "field='toxicity'"),
        (["harmbench-val"], "has no hub copy"),
    ]
    for spec, message in cases:
        out = tmp_path / "out"
        assert main(["judge", "--validate", *spec, "--judges", "keyword", "--out", str(out), "--quiet"]) == 2, spec
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, (spec, err)
        assert not out.exists(), spec
    for head, args, message in (([], ["--judges", "nosuchjudge", "--out", str(tmp_path / "o")], "unknown judge"),
                                ([], ["--judges", "keyword"], "out_dir"),
                                (["runs/x"], ["--judges", "keyword", "--out", str(tmp_path / "o")],
                                 "not a run directory")):
        assert main(["judge", *head, "--validate", str(LABELS / "judge-comparison.csv"), *args, "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


class Counting(Judge):
    """Says 'harmful' when the response has no 'sorry'; counts and can fail after N calls."""

    calls: list[int] = []
    fail_after: int | None = None

    def __init__(self):
        self.name = "counting"

    def settings(self) -> dict:
        return {"version": 1}

    def judge(self, responses, items):
        if Counting.fail_after is not None and len(Counting.calls) >= Counting.fail_after:
            raise KeyboardInterrupt
        Counting.calls.append(len(responses))
        return [{"harmful": "sorry" not in r.lower(), "refusal": None} for r in responses]


@pytest.fixture
def counting_judge(monkeypatch):
    Counting.calls, Counting.fail_after = [], None
    monkeypatch.setitem(JUDGES.entries, "counting", (lambda args, context: Counting(), "test judge"))
    return Counting


def test_interrupted_validation_resumes_from_the_cache(tmp_path, counting_judge):
    labels = f"jbb-judges:{LABELS / 'judge-comparison.csv'}"
    counting_judge.fail_after = 2
    with pytest.raises(KeyboardInterrupt):
        validate_judges(labels, "counting", tmp_path / "v", batch_size=4)
    assert counting_judge.calls == [4, 4] and not (tmp_path / "v" / "validation.json").exists()
    counting_judge.fail_after = None
    first = validate_judges(labels, "counting", tmp_path / "v", batch_size=4)
    assert counting_judge.calls == [4, 4, 4]  # only the last batch was scored again
    counting_judge.calls = []
    again = validate_judges(labels, "counting", tmp_path / "v", batch_size=4)
    assert counting_judge.calls == [] and again["judges"] == first["judges"]
    assert validate_judges(labels, "counting", tmp_path / "w", cache=False)["judges"] == first["judges"]


def test_judge_run_rejudges_only_what_is_new(tmp_path, counting_judge):
    from deepalign.evaluation.judging import judge_run

    rows = [{"prompt": f"placeholder request {i % 3}", "response": "Sorry, no." if i % 2 else "Here it is."}
            for i in range(8)]  # four distinct (request, response) pairs
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge_run(run_dir=str(src), out_dir=str(tmp_path / "run"), judges=["counting"], cache_dir=str(tmp_path / "c"),
              report=False, quiet=True)
    assert sum(counting_judge.calls) == 6  # duplicates within the run scored once
    counting_judge.calls = []
    judge_run(run_dir=str(src), out_dir=str(tmp_path / "run2"), judges=["counting"], cache_dir=str(tmp_path / "c"),
              report=False, quiet=True)
    assert counting_judge.calls == []  # another run of the same responses: all from the cache
    verdicts = [json.loads(x) for x in (tmp_path / "run2" / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 8 and {v["verdict"]["harmful"] for v in verdicts} == {True, False}


class Misspelt(Judge):
    """Returns words instead of verdicts (or too few verdicts)."""

    name = "misspelt"
    short = False

    def judge(self, responses, items):
        if Misspelt.short:
            return [{"harmful": True}]
        return ["harmful" for _ in responses]


def test_validation_and_judge_runs_check_a_judges_verdicts_alike(tmp_path, monkeypatch):
    """The batch judging of a validation and of a run is one helper: a judge that returns
    something that is no verdict, or too few verdicts, is the same one-line error in both."""
    from deepalign.evaluation.judging import judge_run

    monkeypatch.setitem(JUDGES.entries, "misspelt", (lambda args, context: Misspelt(), "test judge"))
    src = tmp_path / "responses.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"placeholder request {i}", "response": "Here it is."}) + "\n"
                           for i in range(4)))
    labels = f"jbb-judges:{LABELS / 'judge-comparison.csv'}"
    for short, message in ((False, "judge misspelt: a verdict is a Verdict or a dict, got str"),
                           (True, "judge misspelt returned 1 verdicts for 4 responses")):
        Misspelt.short = short
        with pytest.raises(DeepAlignError, match=message):
            validate_judges(labels, "misspelt", tmp_path / f"v{short}", batch_size=4, cache=False)
        with pytest.raises(DeepAlignError, match=message):
            judge_run(run_dir=str(src), out_dir=str(tmp_path / f"run{short}"), judges=["misspelt"], cache=False,
                      report=False, quiet=True)


def test_cached_judge_keys_and_torn_lines(tmp_path):
    from deepalign.judges.cache import CachedJudge, cache_file, verdict_key
    from deepalign.judges.keyword import KeywordJudge
    from deepalign.records import EvalPrompt, Verdict

    harmful = EvalPrompt(id="a", prompt="q", kind="harmful")
    benign = EvalPrompt(id="b", prompt="q", kind="benign")
    ident = {"name": "keyword"}
    # the verdict depends on the item (the keyword judge's `harmful` on its kind): so does the key
    assert verdict_key(ident, "text", harmful) != verdict_key(ident, "text", benign)
    assert verdict_key(ident, "text", harmful) == verdict_key(ident, "text", EvalPrompt(id="z", prompt="q",
                                                                                        kind="harmful"))
    assert verdict_key(ident, "text", harmful) != verdict_key({"name": "keyword", "x": 1}, "text", harmful)
    path = cache_file(tmp_path, KeywordJudge())
    j = CachedJudge(KeywordJudge(), path)
    assert j.judge(["fine", "fine"], [harmful, benign]) == [Verdict(harmful=True, refusal=False),
                                                            Verdict(harmful=None, refusal=False)]
    with path.open("a") as fh:
        fh.write('{"key": "torn')  # an interrupted write
    j2 = CachedJudge(KeywordJudge(), path)
    assert len(j2.store) == 2 and path.read_text().endswith("}\n")
    j2.judge(["fine"], [harmful])
    assert (j2.hits, j2.misses) == (1, 0)


def test_reports_print_validation_numbers_agreement_and_graded_scores(tmp_path, monkeypatch):
    """Once a judge is validated, the eval report prints its numbers next to its rates; a report
    with two judges compares them; a graded judge's mean score comes with its interval."""
    from deepalign.decoding.base import Generation
    from deepalign.evaluation.runner import run_eval
    from deepalign.evaluation.validation import validate_judges
    from deepalign.records import EvalPrompt, Verdict

    monkeypatch.setenv("DEEPALIGN_HOME", str(tmp_path / "home"))

    class Talker:
        name = "talker"

        def generate(self, requests, config):
            texts = ["Sorry, no.", "i cannot do that", "Step one: open it."]
            return [[Generation(r.id, 0, texts[i % 3], 3, "eos")] for i, r in enumerate(requests)]

    class Graded:
        name = "graded"

        def judge(self, responses, items):
            return [Verdict(harmful=len(r) > 12, score=min(1.0, len(r) / 20)) for r in responses]

    items = {"toy": [EvalPrompt(id=f"h{i}", prompt=f"open box {i}", kind="harmful") for i in range(6)]}
    from deepalign.judges import make_judges

    judges = make_judges("keyword,keyword:nocase") + [Graded()]
    run_eval(targets=[Talker()], attacks="direct", datasets=items, judges=judges, out_dir=tmp_path / "run", quiet=True)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Not validated against human labels" in report and "## Agreement between judges" in report
    assert "| keyword | keyword:nocase | refusal | 6 |" in report  # "i cannot" only the case-blind judge sees
    # a quoted disagreement names its cell: target, attack, dataset, item
    assert "- talker | direct | toy | `h1` (refusal: keyword False, keyword:nocase True)" in report
    assert "mean score [95% CI]" in report
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    score = next(c for c in summary["results"] if c["judge"] == "graded")["score"]
    assert score["n"] == 6 and score["ci95"][0] <= score["mean"] <= score["ci95"][1]
    validate_judges(str(LABELS / "xstest_v2_completions_placeholder.csv"), "keyword", tmp_path / "val", register=True)
    assert main(["report", str(tmp_path / "run"), "--quiet"]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Validated against human labels (`" in report and "Cohen's kappa" in report
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["validation"]["keyword"]["n"] > 0


def test_reports_read_the_latest_validation_of_each_judge_once(tmp_path, monkeypatch):
    """Every report looks its judges up in the registry: newest first, a file once, only files
    that validated a judge still missing, and no further once every judge is found."""
    import deepalign.metrics.agreement as agreement
    from deepalign.evaluation.validation import validate_judges
    from deepalign.reports.validations import known_validations

    monkeypatch.setenv("DEEPALIGN_HOME", str(tmp_path / "home"))
    labels = str(LABELS / "xstest_v2_completions_placeholder.csv")
    for out, judge in (("old", "keyword"), ("new", "keyword"), ("other", "keyword:nocase")):
        validate_judges(labels, judge, tmp_path / out, quiet=True, register=True)
    read = []
    real = agreement.read_validation
    monkeypatch.setattr(agreement, "read_validation", lambda path: read.append(Path(path).parent.name) or real(path))
    found = known_validations(["keyword"])
    assert read == ["new"] and Path(found["keyword"]["path"]).parent.name == "new"


def test_a_throwaway_validation_speaks_only_when_asked(tmp_path, monkeypatch, capsys):
    """``judge --validate`` prints where it wrote and each judge's numbers; it changes no later
    report unless ``--register`` says so (or the report is given the file). A registry entry an
    earlier version wrote unasked is not read."""
    from deepalign.evaluation.runner import run_eval
    from deepalign.records import EvalPrompt

    monkeypatch.setenv("DEEPALIGN_HOME", str(tmp_path / "home"))
    labels = f"jbb-judges:{LABELS / 'judge-comparison.csv'}"
    assert main(["judge", "--validate", labels, "--judges", "keyword", "--out", str(tmp_path / "smoke")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'smoke' / 'validation.json'}" in out
    assert "keyword: Validated against human labels" in out and "Cohen's kappa" in out and "not registered" in out
    assert not (tmp_path / "home" / "validations.jsonl").exists()
    # an entry an earlier version registered silently: not read either
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "validations.jsonl").write_text(json.dumps(
        {"path": str(tmp_path / "smoke" / "validation.json"), "labels": "x", "judges": ["keyword"]}) + "\n")

    class Talker:
        name = "talker"

        def generate(self, requests, config):
            from deepalign.decoding.base import Generation

            return [[Generation(r.id, 0, "Sorry, no.", 3, "eos")] for r in requests]

    items = {"toy": [EvalPrompt(id=f"h{i}", prompt=f"open box {i}", kind="harmful") for i in range(3)]}
    run_eval(targets=[Talker()], attacks="direct", datasets=items, judges="keyword", out_dir=tmp_path / "run", quiet=True)
    assert "Not validated against human labels" in (tmp_path / "run" / "report.md").read_text()
    # the user's choice: a file given to the report, or --register
    assert main(["report", str(tmp_path / "run"), "--validation", str(tmp_path / "smoke"), "--quiet"]) == 0
    assert "Validated against human labels" in (tmp_path / "run" / "report.md").read_text()
    assert main(["judge", "--validate", labels, "--judges", "keyword", "--out", str(tmp_path / "kept"), "--register",
                 "--quiet"]) == 0
    assert main(["report", str(tmp_path / "run"), "--quiet"]) == 0
    assert str(tmp_path / "kept") in (tmp_path / "run" / "report.md").read_text()
    capsys.readouterr()
    assert main(["judge", str(tmp_path / "run"), "--judges", "keyword:nocase", "--register", "--quiet"]) == 2
    assert "--register notes a validation: it needs --validate LABELS" in capsys.readouterr().err
