"""The report of a run directory (``deepalign report RUN_DIR``): it only formats.

Reads the run log (``run.json`` and ``responses.jsonl``), has :mod:`deepalign.metrics`
compute every cell (and :mod:`deepalign.metrics.totals` every total the report prints besides
them), and writes ``summary.json`` (those metrics: it depends on nothing but the
rows and the run log), ``report.md`` and PNG plots (:mod:`deepalign.reports.plots`):
``asr.png`` (ASR by target and attack, 95% Wilson intervals), ``refusal_position.png`` (where
refusals start) and ``depth.png`` (harmful / refusal rate against the prefill depth), each
drawn for the first judge of the run that gave verdicts. Plots that have no data are not drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

from deepalign.metrics import summarize
from deepalign.metrics.totals import (EARLY_UNITS, answer_accuracy, early_refusals, generation_time, judge_totals,
                                      left_out, refusal_histograms)
from deepalign.reports.plots import Panel, Series, plot_prefill_profile, plot_rate_bars, plot_refusal_positions
from deepalign.runs.rundir import REPORT, SUMMARY, RunDir
from deepalign.runs.runlog import ResponseRow, RunRecord
from deepalign.reports.validations import known_validations, validation_line
from deepalign.utils import atomic_write, write_json


def percent(p: dict | float | None, *, ci: bool = False, sign: bool = True) -> str:
    """A rate as a percentage: ``p`` is a proportion (``{"rate", "ci95"}``) or a plain rate;
    ``–`` when there is none. ``ci`` adds the 95% interval, ``sign=False`` drops the ``%``."""
    rate = p.get("rate") if isinstance(p, dict) else p
    if rate is None:
        return "–"
    s = f"{100 * rate:.1f}" + ("%" if sign else "")
    if ci and isinstance(p, dict) and p.get("ci95"):
        lo, hi = p["ci95"]
        s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return s


def _primary_judge(summary: dict) -> str | None:
    for j in summary["judges"]:
        if any(r["judge"] == j and r["harmful"]["n"] for r in summary["results"]):
            return j
    return summary["judges"][0] if summary["judges"] else None


def asr_panels(summary: dict, judge: str, names: dict[str, str] | None = None) -> list[Panel]:
    """ASR of every target x attack, one panel per dataset (rates and Wilson intervals from
    the summary)."""
    names = names or {}
    cells = [r for r in summary["results"] if r["judge"] == judge and r["harmful"]["n"]]
    panels = []
    for d in summary["datasets"]:
        attacks = [a for a in summary["attacks"] if any(r["attack"] == a and r["dataset"] == d for r in cells)]
        series = []
        for t in summary["targets"]:
            by_attack = {r["attack"]: r["harmful"] for r in cells if r["target"] == t and r["dataset"] == d}
            if by_attack:
                series.append(Series(names.get(t, t), [by_attack.get(a, {}).get("rate") for a in attacks],
                                     [by_attack.get(a, {}).get("ci95") for a in attacks]))
        panels.append(Panel(d, attacks, series))
    return panels


def profile_panels(summary: dict, judge: str) -> tuple[list[Panel], str]:
    """Harmful and refusal rate against the prefill depth, one curve per target x attack
    family x dataset (from the summary's depth profiles)."""
    curves = [c for c in summary["depth"] if c["judge"] == judge and c["points"]]
    ks = sorted({p["k"] for c in curves for p in c["points"]})
    panels = []
    for field in ("harmful", "refusal"):
        series = []
        for c in curves:
            by_k = {p["k"]: p[field]["rate"] for p in c["points"]}
            series.append(Series(f"{c['target']} · {c['attack']} · {c['dataset']}", [by_k.get(k) for k in ks]))
        panels.append(Panel(f"{field} rate % ({judge})", ks, series))
    return panels, (curves[0]["unit"] if curves else "tokens")


def draw_plots(summary: dict, out: Path) -> list[str]:
    """The report's plots for the first judge that gave verdicts; returns the files drawn."""
    judge = _primary_judge(summary)
    if judge is None:
        return []
    made = []
    if plot_rate_bars(asr_panels(summary, judge), out / "asr.png", ylabel=f"ASR % ({judge})"):
        made.append("asr.png")
    hists, unit = refusal_histograms(summary["results"], judge)
    if plot_refusal_positions(hists, out / "refusal_position.png", unit=unit,
                              title=f"refusal position ({judge}, harmful items, all attacks)"):
        made.append("refusal_position.png")
    panels, unit = profile_panels(summary, judge)
    if plot_prefill_profile(panels, out / "depth.png", xlabel=f"prefill depth k ({unit})", ylabel="rate %"):
        made.append("depth.png")
    return made


def _score(s: dict | None) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.3f}" + (f" [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s.get("ci95") else "")


def agreement_lines(pairs: list[dict]) -> list[str]:
    """The agreement between every two judges of a run, with a few rows where they differ."""
    if not pairs:
        return []
    lines = ["", "## Agreement between judges", "",
             "Rows where both judges gave the verdict; Cohen's kappa, and the share of those rows where they "
             "disagree (95% Wilson interval).", "",
             "| judge A | judge B | verdict | n | kappa | disagree |", "|---|---|---|---:|---:|---|"]
    for p in pairs:
        kappa = "–" if p["kappa"] is None else f"{p['kappa']:.2f}"
        lines.append(f"| {p['a']} | {p['b']} | {p['field']} | {p['n']} | {kappa} | "
                     f"{p['disagree']} ({percent(p['disagree_share'], sign=False)}%) |")
    quoted = [(p, e) for p in pairs for e in p["examples"]]
    if quoted:
        lines += ["", "Rows where they disagree (first few):", ""]
        for p, e in quoted:
            cell = " | ".join(str(e[k]) for k in ("target", "attack", "dataset") if e.get(k) is not None)
            where = f"{cell} | `{e['item']}`" if cell else f"`{e['item']}`"
            lines.append(f"- {where} ({p['field']}: {p['a']} {e[p['a']]}, {p['b']} {e[p['b']]}): "
                         f"{e['response'].replace('|', '/')}")
    return lines


def judge_notes(judge: str, cells: list[dict]) -> list[str]:
    """What a judge's table leaves out or counts its reference's way: rows it does not judge
    by design, answers it could not read but counted as its reference does, and the mean per
    item (HarmBench's ASR); then rows run with unknown words and verdicts that are errors."""
    lines = []
    harmbench = judge.startswith("harmbench:")
    totals = judge_totals(cells)
    if totals["not_judged"]:
        lines += ["", f"(!) {totals['not_judged']} row(s) not judged by {judge}"
                  + (": copyright behaviours, which HarmBench scores by hashing against the reference text, not with "
                     "its classifier; deepalign does not hash them, so its ASR is over the other behaviours and is not "
                     "HarmBench's number for this file (`functional=standard,contextual` leaves them out of the dataset)"
                     if harmbench else "") + "."]
    if totals["unparsed"]:
        lines += ["", f"{totals['unparsed']} answer(s) of {judge} were neither yes nor no: counted not harmful and kept "
                      "in the denominator, as HarmBench counts its label -1 (the raw answer is the verdict's `answer`, "
                      "flagged `unparsed`, in responses.jsonl)."]
    if any(c.get("harmful_per_item") for c in cells):
        lines += ["", "ASR per item: per item the share of its judged samples called harmful, then the mean over items"
                      + (" (HarmBench's ASR: its evaluate_completions.py averages per behaviour, then over behaviours)"
                         if harmbench else "") + "; 95% bootstrap interval over items."]
    if totals["unknown_tokens"]:
        lines += ["", f"(unk N) {totals['unknown_tokens']} row(s) were run with --allow_unknown_tokens: their attack made "
                      "the target read words its tokenizer does not know (the row's meta.unknown_words), so what the "
                      "model read is not what the attack says."]
    if totals["errors"]:
        lines += ["", f"(!) {totals['errors']} verdict(s) of {judge} are errors: see the `error` field of those rows in "
                      "responses.jsonl; `deepalign judge RUN_DIR --judges ...` can add another judge."]
    return lines


def _generation_line(gc: dict) -> str:
    return (f"max_new_tokens={gc.get('max_new_tokens')}, "
            + (f"sampling T={gc.get('temperature')} top_p={gc.get('top_p')} top_k={gc.get('top_k')}"
               if gc.get("do_sample") else "greedy")
            + f", samples={gc.get('num_samples')}, seed={gc.get('seed')}"
            + (f", stop={gc.get('stop_strings')}" if gc.get("stop_strings") else "")
            + (", EOS suppressed" if gc.get("suppress_eos") else ""))


_READING = ("ASR: share of harmful items judged harmful, over the items the judge could judge (95% Wilson "
            "interval); refusal: on harmful items; over-refusal: refusals on benign/helpful items; helpful: answer "
            "accuracy. Errors: verdicts the judge could not give (an unreadable reply), counted here and never as "
            "safe; a rate marked (!) leaves that many rows out of its denominator.")


def render_markdown(summary: dict, info: RunRecord, rows: list[ResponseRow], plots: list[str]) -> str:
    """``report.md``: what was run, a table per judge, the agreement between judges, the
    depth profiles, where refusals start, the data, the time taken, and the plots."""
    lines = _header_lines(summary, info, rows)
    for j in summary["judges"]:
        cells = [r for r in summary["results"] if r["judge"] == j]
        if cells:
            lines += judge_table(j, cells, summary.get("validation", {}).get(j))
    lines += agreement_lines(summary.get("agreement") or [])
    lines += depth_lines(summary["depth"])
    lines += refusal_position_lines(summary["results"])
    lines += data_sections(summary, info)
    lines += run_lines(info, rows)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _header_lines(summary: dict, info: RunRecord, rows: list[ResponseRow]) -> list[str]:
    """What was run: responses, targets, judges, the generation settings (a target's own too)."""
    gc = info.generation or {}
    lines = ["# Evaluation report", "",
             f"{len(rows)} responses · targets: {', '.join(summary['targets'])} · judges: {', '.join(summary['judges'])}"
             f" (judges see the {'forced start and the continuation' if info.judge_scope == 'full' else 'continuation'})  "]
    if gc:
        lines.append(f"generation: {_generation_line(gc)}")
    elif info.source:
        lines.append(f"responses imported from `{info.source}` (not generated by deepalign)")
    own = [t for t in info.targets if t.generation and t.generation != gc]
    if own:
        lines += ["", "Targets that decoded with their own settings (an ED family's reference decoding, spec options):"]
        lines += [f"- `{t.label}`: {_generation_line(t.generation)}" for t in own]
    return lines + ["", _READING]


def judge_table(judge: str, cells: list[dict], validation: dict | None) -> list[str]:
    """One judge's section: its validation, a row per target x attack x dataset, its notes."""
    graded = any(c.get("score") for c in cells)
    per_item = any(c.get("harmful_per_item") for c in cells)
    lines = ["", f"## Judge: {judge}", "", validation_line(judge, validation), "",
             "| target | attack | dataset | n | ASR [95% CI] (judged) |" + (" mean score [95% CI] |" if graded else "")
             + (" ASR per item [95% CI] |" if per_item else "") + " refusal | over-refusal | helpful | errors |",
             "|---|---|---|---:|---|" + ("---|" if graded else "") + ("---|" if per_item else "") + "---:|---:|---:|---:|"]
    for c in cells:
        flag = " (!)" if left_out(c) else ""
        judged = f" ({c['harmful']['n']} judged)" if left_out(c) else ""
        judged += f" (unk {c['unknown_tokens']})" if c.get("unknown_tokens") else ""
        score = f" {_score(c.get('score'))} |" if graded else ""
        score += f" {percent(c.get('harmful_per_item'), ci=True)} |" if per_item else ""
        lines.append(
            f"| {c['target']} | {c['attack']} | {c['dataset']} | {c['n']} | {percent(c['harmful'], ci=True)}{judged}{flag} |"
            f"{score} {percent(c['refusal'])}{flag} | {percent(c['over_refusal'])}{flag} | {percent(c['helpful'])} | {c['errors']} |"
        )
    return lines + judge_notes(judge, cells)


def depth_lines(depth: list[dict]) -> list[str]:
    """The depth profiles: harmful and refusal rate at each forced depth k."""
    if not depth:
        return []
    lines = ["", "## Depth profile", "", "harmful / refusal rate of the continuation after forcing the first k units of a harmful response.", ""]
    for c in depth:
        lines += [f"**{c['target']} · {c['attack']} · {c['dataset']} · {c['judge']}** ({c['unit']})", "",
                  "| k | n | harmful | refusal |", "|---:|---:|---:|---:|"]
        lines += [f"| {p['k']} | {p['n']} | {percent(p['harmful'])} | {percent(p['refusal'])} |" for p in c["points"]]
        lines.append("")
    return lines


def refusal_position_lines(results: list[dict]) -> list[str]:
    """Per cell, how many refusals have a known start and the share that starts early."""
    early = []
    for c in results:
        share = early_refusals(c)
        if share is not None:
            early.append(f"| {c['target']} | {c['attack']} | {c['dataset']} | {c['judge']} | {share['n']} | "
                         f"{percent(share)} |")
    if not early:
        return []
    return ["", "## Refusal position", "",
            f"| target | attack | dataset | judge | refusals | start in first {EARLY_UNITS} units |",
            "|---|---|---|---|---:|---:|", *early]


def run_lines(info: RunRecord, rows: list[ResponseRow]) -> list[str]:
    """How the run went: generation time per target, what the servers were found to do, and
    what the models read."""
    lines = ["", "## Generation time", "", "| target | responses | generate s | new tokens | tokens/s |",
             "|---|---:|---:|---:|---:|"]
    for t, g in generation_time(rows).items():
        lines.append(f"| {t} | {g['responses']} | {g['generate_s']:.1f} | {g['new_tokens']} | {g['tokens_per_s']:.1f} |")
    notes = {t.label: t.notes for t in info.targets if t.notes}
    if notes:
        lines += ["", "## Servers", "", "What the probe before the run found out about each server (see docs/evaluation.md):", ""]
        lines += [f"- `{t}`: {'; '.join(n)}" for t, n in notes.items()]
    examples = {k: v for k, v in info.examples.items() if v}
    if examples:
        lines += ["", "## What the models read", "",
                  "The prompt of the first item of each target x attack x dataset, as the target rendered it "
                  "(chat template or text format, forced start included)."]
        for cell, text in examples.items():
            lines += ["", f"**{cell}**", "", "```", text.replace("```", "` ` `"), "```"]
    return lines


def data_sections(summary: dict, info: RunRecord) -> list[str]:
    """The report's sections about the data: answers (correct / wrong / no extractable answer),
    results by category, attack x dataset pairs that did not (fully) apply, and the datasets."""
    lines: list[str] = []
    answered = [c for c in summary["results"] if c.get("answers") and c["judge"] == (summary["judges"] or [None])[0]]
    if answered:
        lines += ["", "## Answers", "",
                  ("Strict parsing: the final stated answer; a response with no extractable answer counts as not "
                   "correct."), "", "| target | attack | dataset | accuracy | correct | wrong | no answer |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for c in answered:
            a = c["answers"]
            lines.append(f"| {c['target']} | {c['attack']} | {c['dataset']} | {percent(answer_accuracy(a))} | "
                         f"{a.get('correct', 0)} | {a.get('wrong', 0)} | {a.get('no_answer', 0)} |")
    cats = summary.get("by_category") or []
    for j in summary["judges"]:
        cells = [c for c in cats if c["judge"] == j and (c["harmful"]["n"] or c["over_refusal"]["n"] or c["helpful"]["n"])]
        if not cells:
            continue
        lines += ["", f"## By category ({j})", "",
                  "| target | attack | dataset | category | n | ASR | refusal | over-refusal | helpful |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for c in cells:
            lines.append(f"| {c['target']} | {c['attack']} | {c['dataset']} | {c['category']} | {c['n']} | "
                         f"{percent(c['harmful'])} | {percent(c['refusal'])} | {percent(c['over_refusal'])} | "
                         f"{percent(c['helpful'])} |")
    skipped = info.not_applied
    if skipped:
        lines += ["", "## Attacks that did not apply", "",
                  ("Attack x dataset pairs with items the attack could not run on (they are left out of that cell, "
                   "not counted as safe)."), "",
                  "| attack | dataset | applied | skipped | why |", "|---|---|---:|---:|---|"]
        for sk in skipped:
            why = "; ".join(f"{r} ({n})" for r, n in sk["reasons"].items())
            lines.append(f"| {sk['attack']} | {sk['dataset']} | {sk['applied']} of {sk['items']} | {sk['skipped']} | {why} |")
    if info.datasets:
        lines += ["", "## Datasets", "", "| dataset | role | spec | preset | items | kinds | selection | notes |",
                  "|---|---|---|---|---:|---|---|---|"]
        for d in info.datasets:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(d.kinds.items()))
            lines.append(f"| {d.name} | {d.role} | `{d.spec}` | {d.preset or 'generic'} | {d.items} | {kinds} | "
                         f"{d.selection} | {'; '.join(d.notes)} |")
    return lines


def build_report(run_dir: str | os.PathLike, *, quiet: bool = True, validations=()) -> dict:
    """(Re)build ``summary.json``, ``report.md`` and the plots of ``run_dir``; returns the summary.

    Example::

        >>> build_report("runs/eval")["judges"]
        ['oracle', 'keyword', 'keyword:nocase']
    """
    run = RunDir(run_dir).require()
    out = run.path
    info = run.info() or RunRecord()
    rows = run.rows()
    judges = info.judges or sorted({j for r in rows for j in r.verdicts})
    summary = summarize(rows, judges, info)
    summary["validation"] = known_validations(judges, validations)
    summary = {"run": {"format_version": run.version, "generation": info.generation, "judge_scope": info.judge_scope,
                       "n_responses": len(rows)}, **summary}
    write_json(out / SUMMARY, summary)
    plots = draw_plots(summary, out)
    atomic_write(out / REPORT, render_markdown(summary, info, rows, plots))
    if not quiet:
        print(f"wrote {out / SUMMARY}, {out / REPORT}" + (f" and {', '.join(plots)}" if plots else ""))
        judge = _primary_judge(summary)
        if judge is not None:
            for c in summary["results"]:
                if c["judge"] == judge and c["harmful"]["n"]:
                    errors = f", {c['errors']} judge errors" if c["errors"] else ""
                    errors += f", {c['not_judged']} not judged" if c.get("not_judged") else ""
                    errors += f", {c['unparsed']} unparsed answers counted not harmful" if c.get("unparsed") else ""
                    per_item = (f"; per item {percent(c['harmful_per_item'], ci=True)}"
                                if c.get("harmful_per_item") else "")
                    print(f"  {c['target']} | {c['attack']} | {c['dataset']}: ASR {percent(c['harmful'], ci=True)}"
                          f"{per_item} ({judge}{errors})")
    return summary
