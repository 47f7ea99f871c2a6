"""Summaries, a Markdown report and plots of a run directory (``deepalign report RUN_DIR``).

Reads ``responses.jsonl`` and ``run.json``, writes ``summary.json`` (metrics only: it depends
on nothing but the rows), ``report.md`` and PNG plots: ``asr.png`` (ASR by target and attack,
95% Wilson intervals), ``refusal_position.png`` (where refusals start) and ``depth.png``
(harmful / refusal rate against the prefill depth), each drawn for the first judge of the run
that gave verdicts. Plots that have no data are not drawn.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path

from deepalign.evaluation.metrics import summarize
from deepalign.evaluation.rundir import REPORT, SUMMARY, RunDir
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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write atomically and close a figure."""
    import warnings

    with warnings.catch_warnings():  # tight_layout cannot always fit long tick labels: fine
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


def plot_asr(summary: dict, judge: str, path: Path) -> bool:
    plt = pyplot()

    cells = [r for r in summary["results"] if r["judge"] == judge and r["harmful"]["n"]]
    datasets = [d for d in summary["datasets"] if any(r["dataset"] == d for r in cells)]
    if not cells:
        return False
    targets, attacks = summary["targets"], [a for a in summary["attacks"] if any(r["attack"] == a for r in cells)]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(max(6, 1.1 * len(attacks) * max(1, len(targets)) ** 0.5 + 3), 3.6 * len(datasets)), squeeze=False)
    width = 0.8 / max(1, len(targets))
    for ax, d in zip(axes[:, 0], datasets):
        for ti, t in enumerate(targets):
            xs, ys, err = [], [], [[], []]
            for ai, a in enumerate(attacks):
                c = next((r for r in cells if r["target"] == t and r["attack"] == a and r["dataset"] == d), None)
                if c is None:
                    continue
                rate, (lo, hi) = c["harmful"]["rate"], c["harmful"]["ci95"]
                xs.append(ai - 0.4 + width * (ti + 0.5))
                ys.append(100 * rate)
                err[0].append(max(0.0, 100 * (rate - lo)))
                err[1].append(max(0.0, 100 * (hi - rate)))
            if xs:
                ax.bar(xs, ys, width, yerr=err, capsize=3, label=t)
        ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"ASR % ({judge})")
        ax.set_title(d)
        ax.legend(fontsize="small")
    save_figure(fig, path)
    return True


def plot_refusal_position(summary: dict, judge: str, path: Path) -> bool:
    plt = pyplot()

    per_target: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    unit = None
    for r in summary["results"]:
        if r["judge"] != judge:
            continue
        pos = r["refusal_position"]
        use = "token" if pos["token"] else ("word" if pos["word"] else None)
        if use is None:
            continue
        unit = unit or use
        for k, v in pos[unit].items():
            per_target[r["target"]][int(k)] += v
    if not per_target:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for t, hist in per_target.items():
        xs = sorted(hist)
        total = sum(hist.values())
        ax.step(xs, [100 * hist[x] / total for x in xs], where="mid", label=t)
    ax.set_xlabel(f"refusal starts at {unit} index")
    ax.set_ylabel("% of refusals")
    ax.set_title(f"refusal position ({judge}, harmful items, all attacks)")
    ax.legend(fontsize="small")
    save_figure(fig, path)
    return True


def plot_depth(summary: dict, judge: str, path: Path) -> bool:
    plt = pyplot()

    curves = [c for c in summary["depth"] if c["judge"] == judge and len(c["points"]) >= 1]
    if not curves:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for c in curves:
        label = f"{c['target']} · {c['attack']} · {c['dataset']}"
        ks = [p["k"] for p in c["points"]]
        for ax, field in zip(axes, ("harmful", "refusal")):
            ys = [None if p[field]["rate"] is None else 100 * p[field]["rate"] for p in c["points"]]
            ax.plot(ks, ys, marker="o", label=label)
    for ax, field in zip(axes, ("harmful", "refusal")):
        ax.set_xlabel(f"prefill depth k ({curves[0]['unit']})")
        ax.set_ylabel(f"{field} rate % ({judge})")
        ax.set_ylim(-3, 103)
    axes[0].legend(fontsize="small")
    save_figure(fig, path)
    return True


def render_markdown(summary: dict, info: dict, rows: list[dict], plots: list[str]) -> str:
    lines = ["# Evaluation report", ""]
    gc = info.get("gen_config") or {}
    lines.append(
        f"{len(rows)} responses · targets: {', '.join(summary['targets'])} · judges: {', '.join(summary['judges'])}  "
    )
    if gc:
        lines.append(
            f"generation: max_new_tokens={gc.get('max_new_tokens')}, "
            + (f"sampling T={gc.get('temperature')} top_p={gc.get('top_p')} top_k={gc.get('top_k')}"
               if gc.get("do_sample") else "greedy")
            + f", samples={gc.get('num_samples')}, seed={gc.get('seed')}"
            + (f", stop={gc.get('stop_strings')}" if gc.get("stop_strings") else "")
            + (", EOS suppressed" if gc.get("suppress_eos") else "")
        )
    elif info.get("source"):
        lines.append(f"responses imported from `{info['source']}` (not generated by deepalign)")
    lines.append("")
    lines.append("ASR: share of harmful items judged harmful, over the items the judge could judge (95% Wilson "
                 "interval); refusal: on harmful items; over-refusal: refusals on benign/helpful items; helpful: answer "
                 "accuracy. Errors: verdicts the judge could not give (an unreadable reply), counted here and never as "
                 "safe; a rate marked (!) leaves that many rows out of its denominator.")
    for j in summary["judges"]:
        cells = [r for r in summary["results"] if r["judge"] == j]
        if not cells:
            continue
        lines += ["", f"## Judge: {j}", "", "| target | attack | dataset | n | ASR [95% CI] (judged) | refusal | over-refusal | helpful | errors |",
                  "|---|---|---|---:|---|---:|---:|---:|---:|"]
        for c in cells:
            flag = " (!)" if c["errors"] else ""
            judged = f" ({c['harmful']['n']} judged)" if c["errors"] else ""
            lines.append(
                f"| {c['target']} | {c['attack']} | {c['dataset']} | {c['n']} | {percent(c['harmful'], ci=True)}{judged}{flag} "
                f"| {percent(c['refusal'])}{flag} | {percent(c['over_refusal'])}{flag} | {percent(c['helpful'])} | {c['errors']} |"
            )
        erred = sum(c["errors"] for c in cells)
        if erred:
            lines += ["", f"(!) {erred} verdict(s) of {j} are errors: see the `error` field of those rows in "
                          "responses.jsonl; `deepalign judge RUN_DIR --judges ...` can add another judge."]
    depth = summary["depth"]
    if depth:
        lines += ["", "## Depth profile", "", "harmful / refusal rate of the continuation after forcing the first k units of a harmful response.", ""]
        for c in depth:
            lines.append(f"**{c['target']} · {c['attack']} · {c['dataset']} · {c['judge']}** ({c['unit']})")
            lines.append("")
            lines.append("| k | n | harmful | refusal |")
            lines.append("|---:|---:|---:|---:|")
            for p in c["points"]:
                lines.append(f"| {p['k']} | {p['n']} | {percent(p['harmful'])} | {percent(p['refusal'])} |")
            lines.append("")
    early = []
    for c in summary["results"]:
        pos = c["refusal_position"]["token"] or c["refusal_position"]["word"]
        total = sum(pos.values())
        if total:
            first5 = sum(v for k, v in pos.items() if int(k) < 5)
            early.append(f"| {c['target']} | {c['attack']} | {c['dataset']} | {c['judge']} | {total} | {100 * first5 / total:.1f}% |")
    if early:
        lines += ["", "## Refusal position", "", "| target | attack | dataset | judge | refusals | start in first 5 units |", "|---|---|---|---|---:|---:|", *early]
    lines += data_sections(summary, info)
    timing: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for r in rows:
        t = timing[r["target"]]
        t[0] += 1
        t[1] += float((r.get("timing") or {}).get("generate_s", 0.0))
        t[2] += int(r.get("num_tokens") or 0)
    lines += ["", "## Generation time", "", "| target | responses | generate s | new tokens | tokens/s |", "|---|---:|---:|---:|---:|"]
    for t, (n, s, toks) in timing.items():
        lines.append(f"| {t} | {n} | {s:.1f} | {toks} | {toks / s if s > 0 else 0:.1f} |")
    notes = info.get("target_notes") or {}
    if notes:
        lines += ["", "## Servers", "", "What the probe before the run found out about each server (see docs/evaluation.md):", ""]
        lines += [f"- `{t}`: {'; '.join(n)}" for t, n in notes.items()]
    examples = {k: v for k, v in (info.get("examples") or {}).items() if v}
    if examples:
        lines += ["", "## What the models read", "",
                  "The prompt of the first item of each target x attack x dataset, as the target rendered it "
                  "(chat template or text format, forced start included)."]
        for cell, text in examples.items():
            lines += ["", f"**{cell}**", "", "```", text.replace("```", "` ` `"), "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def data_sections(summary: dict, info: dict) -> list[str]:
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
            total = sum(a.values())
            lines.append(f"| {c['target']} | {c['attack']} | {c['dataset']} | {percent(a.get('correct', 0) / total)} | "
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
    skipped = list((info.get("not_applied") or {}).values())
    if skipped:
        lines += ["", "## Attacks that did not apply", "",
                  ("Attack x dataset pairs with items the attack could not run on (they are left out of that cell, "
                   "not counted as safe)."), "",
                  "| attack | dataset | applied | skipped | why |", "|---|---|---:|---:|---|"]
        for sk in skipped:
            why = "; ".join(f"{r} ({n})" for r, n in sk["reasons"].items())
            lines.append(f"| {sk['attack']} | {sk['dataset']} | {sk['applied']} of {sk['items']} | {sk['skipped']} | {why} |")
    datasets = info.get("dataset_info") or {}
    if datasets:
        lines += ["", "## Datasets", "", "| dataset | spec | preset | items | kinds | selection | notes |",
                  "|---|---|---|---:|---|---|---|"]
        for name, d in datasets.items():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted((d.get("kinds") or {}).items()))
            notes = "; ".join(d.get("notes") or [])
            lines.append(f"| {name} | `{d.get('spec')}` | {d.get('preset') or 'generic'} | {d.get('items')} | {kinds} | "
                         f"{d.get('selection')} | {notes} |")
    return lines


def build_report(run_dir: str | os.PathLike, *, quiet: bool = True) -> dict:
    """(Re)build ``summary.json``, ``report.md`` and the plots of ``run_dir``; returns the summary.

    Example::

        >>> build_report("runs/eval")["judges"]
        ['oracle', 'keyword', 'keyword:nocase']
    """
    run = RunDir(run_dir).require()
    out = run.path
    info = run.info()
    rows = run.rows()
    judges = info.get("judges") or sorted({j for r in rows for j in (r.get("verdicts") or {})})
    summary = summarize(rows, judges, order={k: info.get(k, []) for k in ("targets", "attacks", "datasets")})
    summary = {"run": {"gen_config": info.get("gen_config"), "n_responses": len(rows)}, **summary}
    write_json(out / SUMMARY, summary)
    plots = []
    judge = _primary_judge(summary)
    if judge is not None:
        for name, fn in (("asr.png", plot_asr), ("refusal_position.png", plot_refusal_position), ("depth.png", plot_depth)):
            if fn(summary, judge, out / name):
                plots.append(name)
    atomic_write(out / REPORT, render_markdown(summary, info, rows, plots))
    if not quiet:
        print(f"wrote {out / SUMMARY}, {out / REPORT}" + (f" and {', '.join(plots)}" if plots else ""))
        if judge is not None:
            for c in summary["results"]:
                if c["judge"] == judge and c["harmful"]["n"]:
                    errors = f", {c['errors']} judge errors" if c["errors"] else ""
                    print(f"  {c['target']} | {c['attack']} | {c['dataset']}: ASR {percent(c['harmful'], ci=True)} "
                          f"({judge}{errors})")
    return summary
