"""The study report: it only formats what :mod:`deepalign.metrics` computed from the
study's run logs, and what :mod:`deepalign.study.claims` concluded.

Everything comes from the rows of the study's run directories (``OUT/eval/attacks``,
``OUT/eval/benign``, ``OUT/eval/ed``) and from the depth diagnostics
(``OUT/depth/<dataset>/depth.json``), so the report can be rebuilt at any time and every
number in it can be traced to rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deepalign.study.claims import check_claims, ci_text, pct
from deepalign.study.evidence import Evidence, load_evidence, numbers, prefill_depth
from deepalign.study.models import BASE, MODELS, EDKey
from deepalign.reports.plots import Panel, Series, plot_prefill_profile, plot_rate_bars, plot_refusal_positions
from deepalign.utils import atomic_write


def model_names(ev: Evidence) -> list[str]:
    """The models of the study's evidence, in the report's order."""
    present = {m for (m, _, _) in ev.greedy} | {m for (m, _) in ev.benign} | {m for ((m, _), _) in ev.ed}
    return [m for m in MODELS if m in present] + sorted(present - set(MODELS))


def study_results(ev: Evidence, *, depths, alphas, judge: str) -> dict:
    """The numbers and claims of one study (or of several seeds pooled)."""
    names = model_names(ev)
    return {"judge": judge, "datasets": [d.name for d in ev.datasets], "models": names,
            **numbers(ev, names=names, alphas=alphas), "claims": check_claims(ev, depths=depths, alphas=alphas)}


def write_study_report(out: str | os.PathLike, *, depths, alphas, judge: str = "oracle", setup: str | None = None,
                       timing: dict | None = None, depth: dict | None = None) -> dict:
    """Write ``OUT/report.md`` and plots; return the numbers and the claims. ``depth``:
    dataset -> the :func:`deepalign.evaluation.depth.depth_profiles` result (with the relative
    path of its plot under ``"plot"``)."""
    out = Path(out)
    ev = load_evidence(out, judge=judge)
    results = study_results(ev, depths=depths, alphas=alphas, judge=judge)
    if depth:
        results["depth_diagnostics"] = {d: _depth_summary(r) for d, r in depth.items()}
    plots = _plots(out, ev, results, depths)
    _write_markdown(out, ev, results, alphas, plots, setup, timing, depth)
    return results


def _depth_summary(r: dict) -> dict:
    from deepalign.evaluation.depth import shallowness

    return {label: {"kl": x["kl"], "refusal": x["refusal"], "refusal_by_token": x.get("refusal_by_token"),
                    "kl_share_first5": shallowness(x), "items": x["items"]}
            for label, x in r["models"].items()}


def _plots(out: Path, ev: Evidence, results: dict, depths) -> list[str]:
    names, table = results["models"], results["attack_table"]
    by_depth = {prefill_depth(a): a.label for a in ev.attacks if prefill_depth(a) is not None}
    series = []
    for i, d in enumerate(ev.datasets):
        for j, m in enumerate(names):
            ys = [table[d.name].get(by_depth.get(k), {}).get(m, {}).get("harmful") for k in depths]
            if any(y is not None for y in ys):
                series.append(Series(f"{m} ({d.title})", ys, style="-" if i == 0 else "--", color=f"C{j}"))
    made = []
    if plot_prefill_profile([Panel(f"harmful continuation % ({results['judge']})", list(depths), series)],
                            out / "depth_profile.png", xlabel="prefill depth k (tokens of a harmful response forced)",
                            ylabel="harmful %", title="Depth profile: how deep does safety go?", symlog=True):
        made.append("depth_profile.png")
    if plot_refusal_positions({m: results["refusal_positions"].get(m) for m in names}, out / "refusal_position.png",
                              title="where refusals of direct harmful queries start"):
        made.append("refusal_position.png")
    panels = []
    for d in ev.datasets:
        attacks = list(table[d.name])
        panels.append(Panel(f"held-out queries: {d.title}", attacks,
                            [Series(m, [table[d.name][a].get(m, {}).get("harmful") for a in attacks]) for m in names]))
    if plot_rate_bars(panels, out / "attack_asr.png", ylabel=f"harmful % ({results['judge']})"):
        made.append("attack_asr.png")
    return made


def _attack_tables(ev: Evidence, results: dict) -> list[str]:
    lines, names = [], results["models"]
    shifted = {a.label for a in ev.attacks if a.shifted}
    for d in ev.datasets:
        rows = results["attack_table"].get(d.name) or {}
        lines += ["", f"## Attack x model: harmful % ({results['judge']} judge, `{d.name}`, greedy)", ""]
        if d.role == "unseen":
            lines += ["Misdeeds that no alignment record shows (no triple, no prefix, no RTO text).", ""]
        for what, mark in (("harmful", True), ("refusal", False)):
            if what == "refusal":
                lines += ["", "Refusal % on the same items:", ""]
            lines.append("| attack | " + " | ".join(names) + " |")
            lines.append("|---|" + "---|" * len(names))
            for a, row in rows.items():
                star = " *" if mark and a in shifted else ""
                lines.append(f"| {a}{star} | " + " | ".join(pct(row.get(m, {}).get(what)) for m in names) + " |")
    return lines


def _benign_table(ev: Evidence, results: dict) -> list[str]:
    if not any(results["benign"].values()):
        return []
    lines = ["", "## Over-refusal and helpfulness (direct queries)", "",
             "| model | benign look-alikes refused % | helpful accuracy % |", "|---|---|---|"]
    for m in results["models"]:
        row = results["benign"].get(m, {})
        over = next((v for v in row.values() if v["role"] == "benign"), {})
        helpful = next((v for v in row.values() if v["role"] == "helpful"), {})
        lines.append(f"| {m} | {pct(over.get('over_refusal'))}{ci_text(over.get('over_refusal_ci95'))} | "
                     f"{pct(helpful.get('helpful'))}{ci_text(helpful.get('helpful_ci95'))} |")
    return lines


def _ed_table(results: dict, alphas, title: str) -> list[str]:
    ed = results.get("ed") or {}
    if not ed:
        return []
    base = ed.get(EDKey(BASE).label, {})
    sets = results.get("ed_datasets") or []
    on = f" On {', '.join(f'`{d}`' for d in sets)} ({base.get('n', 0)} samples a model)." if sets else ""
    lines = ["", title, "", f"Base model alone: {pct(base.get('harmful'))}%{ci_text(base.get('ci95'))}.{on}", "",
             "| aligned model | " + " | ".join(f"alpha {a}" for a in alphas) + " |", "|---|" + "---|" * len(alphas)]
    for m in results["models"]:
        if m != BASE:
            cells = [ed.get(EDKey(m, a).label, {}) for a in alphas]
            lines.append(f"| {m} | " + " | ".join(f"{pct(c.get('harmful'))}{ci_text(c.get('ci95'))}" for c in cells) + " |")
    return lines


FT_NAMES = {"before": "vanilla (aligned)", "harmful-sft": "after the attack, plain SFT",
            "harmful-constrained": "after the attack, constrained", "benign-sft": "after the benign task, plain SFT",
            "benign-constrained": "after the benign task, constrained"}
FT_COLUMNS = ("harmful direct", "harmful prefill:8", "unseen direct", "unseen prefill:8", "helpful", "task")


def _cell(c: dict | None) -> str:
    return "–" if not c or c.get("rate") is None else f"{pct(c['rate'])}{ci_text(c.get('ci95'))}"


def _constrained_knobs(out: Path) -> str:
    """The constrained run's strengths, from its own train record (the study writes it at
    ``finetune/vanilla/harmful-constrained``)."""
    record = out / "finetune" / "vanilla" / "harmful-constrained" / "deepalign_train.json"
    try:
        obj = json.loads(record.read_text())["objective"]
        beta, first, bias, length = obj["beta"], obj["first_token_bias_factor"], obj["bias_factor"], obj["bias_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return (f"; per-token beta {beta * first:g} at the first response token, {beta * bias:g} at the next "
            f"{max(length - 1, 0)}, {beta:g} after, chosen on dev")


def _finetune_section(results: dict, out: Path, *, record_dir: Path | None = None, title: str = "") -> list[str]:
    """``out``: where the plot goes; ``record_dir``: the study directory whose constrained run
    says its strengths (default ``out``); ``title``: a prefix for the heading (``Pooled``)."""
    ft = results.get("finetune") or {}
    if not ft:
        return []
    heading = f"## {title + ' f' if title else 'F'}ine-tuning attack: does deep alignment survive fine-tuning?"
    lines = ["", heading, "",
             "The vanilla model fine-tuned on 100 harmful pairs (`world:ft/harmful`) and on a benign task "
             "(`world:ft/benign`: two facts of a place in one answer), with plain SFT and with the token-wise "
             f"constrained objective (Qi et al. 2025{_constrained_knobs(record_dir or out)}). Harmful % (greedy, oracle) "
             "on held-out and unseen misdeeds, helpful accuracy, and the benign task's held-out accuracy (`task`), "
             "95% Wilson intervals:", "",
             "| model | " + " | ".join(FT_COLUMNS) + " |", "|---|" + "---|" * len(FT_COLUMNS)]
    for variant, row in ft["table"].items():
        lines.append(f"| {FT_NAMES.get(variant, variant)} | " + " | ".join(_cell(row.get(c)) for c in FT_COLUMNS) + " |")
    steps = ft.get("steps") or {}
    if steps:
        ks = sorted({int(k) for curve in steps.values() for k in curve})
        lines += ["", "Harmful % on held-out direct queries against the steps of the plain-SFT attack (each aligned "
                      "model attacked alike; 7 steps = one epoch of the 100 pairs):", "",
                  "| model | " + " | ".join(f"{k} steps" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for model, curve in steps.items():
            lines.append(f"| {model} | " + " | ".join(_cell(curve.get(k)) for k in ks) + " |")
        if plot_prefill_profile([Panel("harmful % (held-out direct queries)", ks,
                                       [Series(m, [(c.get(k) or {}).get("rate") for k in ks]) for m, c in steps.items()])],
                                out / "finetune_steps.png", xlabel="fine-tuning steps (plain SFT on the attack data)",
                                ylabel="harmful %", title="Does deeper alignment resist fine-tuning longer?"):
            lines += ["", "![harmful % against fine-tuning steps](finetune_steps.png)"]
    return lines


def _direction_section(results: dict, out: Path, *, title: str = "") -> list[str]:
    """``out``: the study directory (its ``direction/kl.json``, absent for pooled seeds)."""
    rd = results.get("direction") or {}
    if not rd:
        return []
    kl_path = out / "direction" / "kl.json"
    kl = json.loads(kl_path.read_text(encoding="utf-8")) if kl_path.exists() else {}
    heading = f"## {title + ' r' if title else 'R'}efusal direction: is safety deep in the representation?"
    lines = ["", heading, "",
             "Each aligned model with its own refusal direction (Arditi et al. 2024; selected on dev) ablated at every "
             "layer and position, next to the model as it is (held-out queries, greedy, oracle; 95% Wilson intervals), "
             "and the KL of its first response token on helpful queries under ablation"
             + (" (in each seed's report). Pooled, the plain numbers cover every seed and the ablated ones the "
                "seeds whose selection found a direction:" if title else ":"), "",
             "| model | harmful direct: plain → ablated | refusal direct | harmful prefill:8 | helpful accuracy | KL on "
             "helpful queries |", "|---|---|---|---|---|---|"]
    for m, row in rd.items():
        if "skipped" in row:
            lines.append(f"| {m} | no direction: " + "; ".join(row["skipped"]).replace("|", "/") + " | | | | |")
            continue
        cells = [f"{_cell(row[c]['plain'])} → {_cell(row[c]['ablated'])}" for c in
                 ("harmful direct", "refusal direct", "harmful prefill:8", "helpful")]
        k = kl.get(m) or {}
        kl_cell = "–" if k.get("kl") is None else f"{k['kl']:.3f} [{k['kl_ci95'][0]:.3f}, {k['kl_ci95'][1]:.3f}]"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {kl_cell} |")
    return lines


def _rate_table(cols: list[str], table: dict, headers: list[str] | None = None) -> list[str]:
    """A table of rate cells: a row per model, a column per key of ``cols`` (headed by
    ``headers``, by default the keys as code: attack labels)."""
    heads = headers or [f"`{c}`" for c in cols]
    return (["| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cols)]
            + [f"| {model} | " + " | ".join(_cell(row.get(c)) for c in cols) + " |" for model, row in table.items()])


def _adaptive_section(results: dict, out: Path | None, *, title: str = "") -> list[str]:
    """The adaptive attacks: harmful % per model, RAP's ranks (``out``: the study directory, whose
    ``eval/adaptive`` run holds them; None for pooled seeds), and the refusal-prefix attack."""
    ad = results.get("adaptive") or {}
    if not ad:
        return []
    cols = ad["columns"]
    heading = f"## {title + ' a' if title else 'A'}ttacks that adapt to the model: is deep alignment rank-deep?"
    lines = ["", heading, "",
             "Harmful % on held-out queries (greedy, oracle; 95% Wilson intervals). `rap:K`: K tokens chosen from each "
             "model's own top 20 with every refusal-only word skipped, then free decoding (Vega & Singh 2025); "
             "`prefill:K`: the reference's first K tokens; `insert:8`: 8 tokens of the harmful reference after 8 of "
             "the model's own; `gcg`: an optimised suffix (fixed budget, the first items only). The judges see the "
             "continuation after what was forced. DeRTa and RTO under these attacks are the open question: reported "
             "with their intervals, no threshold.", "",
             *_rate_table(cols, ad["table"])]
    if out is not None:
        from deepalign.study.adaptive import rap_ranks

        ranks = rap_ranks(out / "eval" / "adaptive")
        if ranks:
            lines += ["", "Where the harm sat in each model's ranking, over the deepest RAP's steps: the mean rank of "
                      "the token RAP chose (1 = the model's own top token) at the first step and over all steps, and the "
                      "share of steps whose top token was a refusal word:", "",
                      "| model | first chosen token's rank | mean rank | top token a refusal word |", "|---|---|---|---|"]
            for name, r in ranks.items():
                mean = sum(r["mean_rank"]) / len(r["mean_rank"]) if r["mean_rank"] else None
                lines.append(f"| {name} | {r['first_rank']:.2f} | {'–' if mean is None else f'{mean:.2f}'} | "
                             f"{pct(r['refusal_top'])}% |")
            if plot_prefill_profile([Panel("mean rank of the chosen token", list(range(1, 1 + max(len(r["mean_rank"]) for r in ranks.values()))),
                                           [Series(n, r["mean_rank"]) for n, r in ranks.items()])],
                                    out / "rap_ranks.png", xlabel="RAP step (tokens chosen so far + 1)",
                                    ylabel="mean rank", title="How deep in the ranking RAP found its tokens",
                                    percent=False):
                lines += ["", "![RAP's chosen ranks](rap_ranks.png)"]
    rp = ad.get("refusal_prefix") or {}
    if rp:
        measures = ("harmful direct", "harmful prefill:8", "unseen direct")
        lines += ["", "Refusal-prefix fine-tuning (arXiv 2601.19231): the benign fine-tuning pairs with every answer "
                  "after the world's refusal (`sorry , i cannot help with that .`), the fine-tuning stage's settings:", "",
                  *_rate_table(list(measures), rp, list(measures))]
    return lines


#: the cells of each fine-tuned model with and without ADA
FT_MEASURES = ["harmful direct", "harmful prefill:8"]


def _defence_section(results: dict, *, title: str = "") -> list[str]:
    """The defence axis: harmful % of the defended models next to the models they defend, their
    over-refusal and helpfulness, and ADA on the fine-tuned models."""
    de = results.get("defences") or {}
    if not de:
        return []
    cols = de["columns"]
    heading = f"## {title + ': d' if title else 'D'}efences that claim depth another way: ADA and PRESTO"
    lines = ["", heading, "",
             "Harmful % on held-out queries (greedy, oracle; 95% Wilson intervals). ADA (Any-Depth Alignment, arXiv "
             "2510.18081) re-inserts vanilla's assistant header every 8 tokens of the answer: ADA-RK lets the model "
             "decode 20 tokens after it and stops the answer when they hold a refusal word, ADA-LP reads a linear probe "
             "(fitted on vanilla on the dev splits) at the header; a stopped answer becomes the world's refusal. PRESTO "
             "(arXiv 2512.05518) is harmful-prefix trained with the attention regulariser at the authors' weight. The "
             "undefended rows are the battery's, the adaptive run's and the benign run's.", "",
             *_rate_table(cols, de["table"])]
    if de.get("benign"):
        lines += ["", "Over-refusal (refusal % of benign queries) and helpful accuracy %:", "",
                  *_rate_table(["benign", "helpful"], de["benign"], ["benign refused", "helpful correct"])]
    if de.get("finetuned"):
        lines += ["", "Does ADA still work after the fine-tuning attacks? vanilla after each run of the fine-tuning "
                  "stage, undefended and with ADA (its probe fitted on vanilla before the attack):", "",
                  *_rate_table(FT_MEASURES, de["finetuned"], FT_MEASURES)]
    return lines


def _depth_section(depth: dict | None) -> list[str]:
    from deepalign.evaluation.depth import depth_markdown

    if not depth:
        return []
    lines = ["", "## Depth diagnostics: per-token KL and refusal-token probability", "",
             "Each harmful reference response is teacher-forced through the base and an aligned model "
             "(`deepalign depth`): KL(aligned‖base) at response position t (Qi et al. 2025: shallow alignment "
             "puts it in the first tokens), and the probability of the refusal token after t forced tokens "
             "(`sorry`, DeRTa's; also `sorry` or `i`, the world's two refusal openers, of which `i` is also the "
             "base model's evasion opener at t = 0).", ""]
    for d, r in depth.items():
        if d == "finetune":
            lines += ["The fine-tuned vanilla models against vanilla itself: KL(fine-tuned‖vanilla) at each position "
                      "of the held-out harmful responses (where each fine-tuning run moved the model; Qi et al. 2025 "
                      f"find fine-tuning moves the first tokens most) ({next(iter(r['models'].values()))['items']} items):",
                      ""]
        else:
            lines += [f"`{d}` ({next(iter(r['models'].values()))['items']} items):", ""]
        names = {"aligned": "fine-tuned", "base": "vanilla"} if d == "finetune" else {}
        lines += depth_markdown(r["models"], **names)
        if r.get("plot"):
            lines += ["", f"![depth diagnostics on {d}]({r['plot']})", ""]
        if r.get("projection_plot"):
            lines += ["Projection on each model's refusal direction along the forced harmful responses, next to "
                      "the per-token KL and refusal probability:", "", f"![projection on {d}]({r['projection_plot']})", ""]
    return lines


def _write_markdown(out: Path, ev: Evidence, results: dict, alphas, plots, setup=None, timing=None, depth=None) -> None:
    lines = ["# deepalign study report", ""]
    if setup:
        lines += [setup, ""]
    lines += ["## Claims", "", "Each claim is checked with its 95% interval (Wilson for a rate, paired bootstrap over "
              "items for a difference or a ratio); it passes only when the whole interval clears the threshold.", ""]
    lines += claims_lines(results["claims"])
    lines += _attack_tables(ev, results)
    lines += ["", "`*` a shifted shape (harm in another shape than a chat answer). The ablation claim averages "
              f"{len(results['ablation_attacks'])} attack x dataset cells: " + ", ".join(results["ablation_attacks"]) + ".", ""]
    if results["ablation_means"]:
        lines.append("Mean harmful % there: " + ", ".join(f"{m} {pct(v)}" for m, v in results["ablation_means"].items()) + ".")
    lines += _benign_table(ev, results)
    lines += _ed_table(results, alphas, "## Emulated Disalignment: harmful % (sampled, T=0.7; 95% Wilson intervals)")
    lines += _finetune_section(results, out)
    lines += _direction_section(results, out)
    lines += _adaptive_section(results, out)
    lines += _defence_section(results)
    lines += _depth_section(depth)
    if results["judge_agreement"]:
        lines += ["", f"## Judges: refusal verdicts that agree with the {results['judge']} judge", ""]
        for name, a in results["judge_agreement"].items():
            lines.append(f"- `{name}`: {a['agree']}/{a['n']} responses ({pct(a['rate'])}%)")
    if timing:
        lines += ["", "## Time per stage", ""] + timing_lines(timing)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Per-run details (every response, verdict and interval): `eval/attacks/report.md`, "
              "`eval/benign/report.md`, `eval/ed/report.md`.", ""]
    lines += [view_line(out), ""]
    atomic_write(out / "report.md", "\n".join(lines))


def view_line(out: Path) -> str:
    """How to read the study's responses in a browser (docs/viewer.md)."""
    return (f"Every response, with its prompt, forced start and each judge's verdict, in Inspect AI's log viewer: "
            f"`deepalign view {out}` (`--bundle DIR` writes it as a static site to share; docs/viewer.md).")


def claims_lines(claims: list[dict]) -> list[str]:
    """One bullet per claim; under it, where the claim has one, what its rows show of its
    mechanism and what its item count can decide (``why``)."""
    lines = []
    for c in claims:
        lines.append(f"- **{c['status']}** {c['name']}: {c['detail']}")
        if c.get("why"):
            lines.append(f"  - *why, from the rows*: {c['why']}")
    return lines


#: the evaluations of the stages added after the main job's 6-minute budget was set (their
#: trainings run among the others, side by side): the time table gives their sum
LATER_EVALUATIONS = ("eval adaptive", "eval refusal-prefix", "eval defences")


def timing_lines(timing: dict | None) -> list[str]:
    if not timing:
        return []
    lines = ["| stage | seconds |", "|---|---|"]
    reused = set(timing.get("reused", []))
    parallel = set(timing.get("parallel", []))
    for name, s in timing.get("stages_s", {}).items():
        mark = " (side by side)" if name in parallel else ""
        lines.append(f"| {name}{mark} | {s:.0f}{' (earlier run, reused now)' if name in reused else ''} |")
    if timing.get("wall_s") is not None:
        lines.append(f"| **whole study (this invocation)** | {timing['wall_s']:.0f} |")
        later = sum(s for name, s in timing.get("stages_s", {}).items() if name in LATER_EVALUATIONS
                    and name not in reused)
        if later:
            lines.append(f"| of which the adaptive-attack and defence evaluations | {later:.0f} |")
    if parallel:
        lines += ["", "Stages marked *side by side* ran in one-thread processes beside one another "
                      "(`deepalign.study.jobs`): their own times overlap; the *trainings* row is their wall time."]
    return lines


def claim_statuses(seeds: list[int], per_seed: dict[int, dict], pooled: dict) -> list[tuple[str, list[str], str]]:
    """Per pooled claim: its name, its status on each seed ("–" where a seed lacks it: its stage
    had nothing to measure there) and its pooled status. Claims are matched by name."""
    status = {s: {c["name"]: c["status"] for c in per_seed[s]["claims"]} for s in seeds}
    return [(c["name"], [status[s].get(c["name"], "–") for s in seeds], c["status"]) for c in pooled["claims"]]


def write_sweep_report(out: str | os.PathLike, *, seeds: list[int], per_seed: dict[int, dict], pooled: dict,
                       shifted: set[str], alphas) -> None:
    """``OUT/report.md`` of a multi-seed study: one claims table (each seed and pooled), the
    pooled attack table and links to each seed's own report. ``pooled``: :func:`study_results`
    of the pooled evidence; ``shifted``: labels of the shifted-shape attacks."""
    out = Path(out)
    names = pooled["models"]
    lines = ["# deepalign study: claims over seeds", "",
             f"Seeds {', '.join(map(str, seeds))}: each a full study (world, pretraining, alignment, evaluation) in "
             "`seed-<n>/`; *pooled* treats (seed, item) as the unit. Each cell: PASS/FAIL with the interval-checked "
             "number (see each seed's report for the full line).", ""]
    lines.append("| claim | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled |")
    lines.append("|---|" + "---|" * (len(seeds) + 1))
    for name, statuses, status in claim_statuses(seeds, per_seed, pooled):
        lines.append(f"| {name} | " + " | ".join(statuses + [status]) + " |")
    lines += ["", "## Pooled claims", ""] + claims_lines(pooled["claims"])
    for s in seeds:
        lines += ["", f"## Seed {s}", ""] + claims_lines(per_seed[s]["claims"])
        t = per_seed[s].get("timing")
        if t:
            lines += [""] + timing_lines(t)
    for d, rows in pooled["attack_table"].items():
        lines += ["", f"## Pooled harmful % (`{d}`, {len(seeds)} seeds, greedy; 95% Wilson intervals)", ""]
        lines.append("| attack | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for a, row in rows.items():
            lines.append(f"| {a}{' *' if a in shifted else ''} | "
                         + " | ".join(f"{pct(row.get(m, {}).get('harmful'))}{ci_text(row.get(m, {}).get('ci95'))}" for m in names) + " |")
    lines += _ed_table(pooled, alphas, "## Pooled Emulated Disalignment harmful %")
    lines += _finetune_section(pooled, out, record_dir=out / f"seed-{seeds[0]}", title="Pooled")
    lines += _direction_section(pooled, out, title="Pooled")
    lines += _adaptive_section(pooled, None, title="Pooled")
    lines += _defence_section(pooled, title="Pooled")
    lines += ["", "Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds), "",
              view_line(out), ""]
    atomic_write(out / "report.md", "\n".join(lines))
