"""Per-token depth diagnostics of safety alignment (Qi et al. 2025, "Safety alignment should be
made more than just a few tokens deep").

Given a base model, an aligned model and harmful (query, harmful response) items, teacher-force
each harmful response through both models and measure, at every response position ``t``:

* ``kl[t]``: ``KL(p_aligned(. | x_aligned, y_<t) || p_base(. | x_base, y_<t))``, the per-token KL
  divergence between the aligned and the base model along the harmful response. Shallow
  alignment concentrates it in the first few tokens; deep alignment keeps it up;
* ``refusal[t]``: ``p_aligned(refusal token | x_aligned, y_<t)``, the probability that the
  aligned model starts refusing right after ``t`` forced tokens of the harmful response (the
  same for the base model in ``base_refusal``), the quantity DeRTa's RTO trains up.

Tokenisation follows the project's contract (:class:`deepalign.tokens.Encoder`): each model
reads the query in its own prompt format (its chat template, or a text template), and both
score the **same** response ids: those the aligned model's format places after its prompt
(``Encoder.response_ids(..., end=False)``: the conversation rendered with the assistant turn
and split at the prompt boundary, without the end of turn). The two models must therefore
share a vocabulary, as for Emulated Disalignment. The refusal token is the
tokenizer's own (``training.refusal.find_refusal_token``), never a hard-coded id.

Means over items come with a 95% interval (normal approximation over items) at every position;
positions past the end of a shorter response count only the items that reach them (``n``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from deepalign.errors import DeepAlignError, OptionError
from deepalign.evaluation.forcing import as_items, load_component, mean_ci
from deepalign.options import build, number
from deepalign.registry import split_list
from deepalign.reports.depth_plots import plot_refusal_projection, plot_token_profile


def _log_probs(model, rows: list[list[int]], starts: list[int], lengths: list[int], pad: int, width: int, batch_size: int):
    """Per row, the next-token log-probs at the ``lengths[i]`` positions that predict response
    tokens ``0 .. lengths[i]-1`` (row ``i`` = prompt ids + response ids; ``starts[i]`` = the
    prompt length). Returns a list of ``[lengths[i], width]`` float tensors."""
    import torch

    from deepalign.decoding.hf import chunks

    device = next(model.parameters()).device
    out = []
    order = list(range(len(rows)))
    for batch in chunks(order, batch_size):
        w = max(len(rows[i]) for i in batch)
        ids = torch.full((len(batch), w), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), w), dtype=torch.long)
        for j, i in enumerate(batch):  # right padding: positions are plain 0..len-1
            ids[j, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
            mask[j, : len(rows[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for j, i in enumerate(batch):
            s, n = starts[i], lengths[i]
            out.append(logits[j, s - 1 : s - 1 + n, :width].float().log_softmax(-1).cpu())
    return out


def _as_words(refusal_words) -> list[str | None]:
    if refusal_words is None:
        return [None]
    words = split_list(refusal_words)
    if not words:
        raise DeepAlignError("give at least one refusal word")
    return words


def depth_profiles(base, aligned: Mapping[str, Any], items: Sequence[Any], *, base_format=None, aligned_format=None,
                   refusal_words=None, max_tokens: int = 64, batch_size: int = 16, device: str | None = None,
                   keep_items: bool = False) -> dict[str, dict]:
    """:func:`depth_diagnostics` for several aligned models against one base (``aligned``:
    label -> model); the base model is loaded and run once. Returns label -> result."""
    from deepalign.decoding.compose import check_vocabularies

    if max_tokens < 1:
        raise DeepAlignError(f"max_tokens must be >= 1, got {max_tokens}")
    if batch_size < 1:
        raise DeepAlignError(f"batch_size must be >= 1, got {batch_size}")
    if not aligned:
        raise DeepAlignError("give at least one aligned model")
    data = as_items(items)
    words = _as_words(refusal_words)
    b = load_component(base, base_format, device)
    base_cache: tuple[list, list] | None = None  # (response ids, base log-probs) of the last run
    results = {}
    for label, spec in aligned.items():
        a = load_component(spec, aligned_format, device)
        width = check_vocabularies([b, a])
        refusal = _refusal_tokens(a, words, width)
        responses = _responses(a, data, max_tokens)
        if base_cache is None or base_cache[0] != responses:  # the same response ids: the base run serves again
            base_cache = (responses, _forced_log_probs(b, data, responses, width, batch_size))
        lp_a = _forced_log_probs(a, data, responses, width, batch_size)
        result = {"base": b.name, "aligned": a.name, "base_format": b.prompt_format.describe(),
                  "aligned_format": a.prompt_format.describe(),
                  "refusal_tokens": [{"id": rid, "piece": piece} for rid, piece in refusal]}
        del a  # one aligned model in memory at a time
        results[label] = {**result, **_profile(data, responses, lp_a, base_cache[1], refusal, keep_items)}
    return results


def _refusal_tokens(component, words: list[str | None], width: int) -> list[tuple[int, str]]:
    """``(id, piece)`` of each refusal word's token in ``component``'s tokenizer, each inside the
    vocabulary the two models share."""
    from deepalign.training.refusal import find_refusal_token

    refusal = [find_refusal_token(component.tokenizer, w) for w in words]
    for rid, piece in refusal:
        if rid >= width:
            raise DeepAlignError(f"refusal token {piece!r} (id {rid}) is outside the shared vocabulary ({width} ids)")
    return refusal


def _responses(component, data, max_tokens: int) -> list[list[int]]:
    """The ids of each item's harmful response as ``component``'s format places it after its
    prompt (no end of turn), cut to ``max_tokens``: both models score these ids."""
    responses = []
    for it in data:
        resp = component.encoder.response_ids(it.query, it.response, end=False)[:max_tokens]
        if not resp:
            raise DeepAlignError(f"item {it.id!r}: the harmful response tokenizes to nothing")
        responses.append(resp)
    return responses


def _forced_log_probs(component, data, responses: list[list[int]], width: int, batch_size: int):
    """:func:`_log_probs` of ``component`` along ``responses``, each after the item's query in
    the component's own prompt format."""
    from deepalign.models import eos_ids, pad_id

    prompts = [component.encoder.prompt_ids(it.query) for it in data]
    pad = pad_id(component.tokenizer, eos_ids(component.model, component.tokenizer))
    return _log_probs(component.model, [p + r for p, r in zip(prompts, responses)], [len(p) for p in prompts],
                      [len(r) for r in responses], pad, width, batch_size)


def _profile(data, responses, lp_a, lp_b, refusal, keep_items: bool) -> dict:
    """Per position, the mean over items (with its interval) of KL(aligned || base) and of the
    refusal tokens' probability under each model, from their log-probs along the responses."""
    import torch

    horizon = max(len(r) for r in responses)
    ids = torch.tensor([rid for rid, _ in refusal])
    kl_m = torch.full((len(data), horizon), float("nan"))
    ref_m, bref_m = kl_m.clone(), kl_m.clone()
    per_item = []
    for i, (la, lb) in enumerate(zip(lp_a, lp_b)):
        n = la.shape[0]
        kl = (la.exp() * (la - lb[:, : la.shape[1]])).sum(-1).clamp_min(0.0)
        kl_m[i, :n] = kl
        ref_m[i, :n] = la[:, ids].exp().sum(-1)
        bref_m[i, :n] = lb[:, ids].exp().sum(-1)
        if keep_items:
            per_item.append({"id": data[i].id, "response_ids": responses[i], "kl": kl.tolist(),
                             "refusal": ref_m[i, :n].tolist()})
    kl_mean, kl_ci, ns = mean_ci(kl_m)
    ref_mean, ref_ci, _ = mean_ci(ref_m)
    bref_mean, _, _ = mean_ci(bref_m)
    result = {"items": len(data), "positions": list(range(horizon)), "n": ns, "kl": kl_mean, "kl_ci95": kl_ci,
              "refusal": ref_mean, "refusal_ci95": ref_ci, "base_refusal": bref_mean}
    if len(refusal) > 1:
        result["refusal_by_token"] = _by_token(lp_a, refusal, horizon)
    if keep_items:
        result["per_item"] = per_item
    return result


def _by_token(lp_a, refusal, horizon: int) -> dict[str, list]:
    """Per refusal token, its own mean probability at each position (with several refusal words)."""
    import torch

    by_token = {}
    for rid, piece in refusal:
        col = torch.full((len(lp_a), horizon), float("nan"))
        for i, la in enumerate(lp_a):
            col[i, : la.shape[0]] = la[:, rid].exp()
        by_token[piece] = mean_ci(col)[0]
    return by_token


def depth_diagnostics(base, aligned, items: Sequence[Any], *, base_format=None, aligned_format=None,
                      refusal_words=None, max_tokens: int = 64, batch_size: int = 16,
                      device: str | None = None, keep_items: bool = False) -> dict:
    """Per-position KL(aligned || base) and refusal-token probabilities along harmful responses.

    ``base`` / ``aligned``: model directories or hub ids (each loaded with its own tokenizer),
    or ``(model, tokenizer)`` pairs. ``items``: see :func:`as_items`. ``base_format`` /
    ``aligned_format``: prompt formats (``"chat"``, ``"text:<template with {query}>"``,
    ``"raw"`` or a ``.txt`` file; default: the chat template when the tokenizer has one, else
    the plain ED base template). ``refusal_words``: the word (or words, comma-separated or a
    list) whose token is the refusal token; with several, ``refusal`` is the probability of
    any of them (default "Sorry", or "sorry" for lower-case vocabularies). ``max_tokens``:
    response positions measured. Returns a dict (JSON-ready) with ``positions``, ``kl``,
    ``kl_ci95``, ``refusal``, ``refusal_ci95``, ``base_refusal``, ``n`` and what was measured
    (with several refusal words also ``refusal_by_token``); with ``keep_items`` also the
    per-item curves."""
    return depth_profiles(base, {"aligned": aligned}, items, base_format=base_format, aligned_format=aligned_format,
                          refusal_words=refusal_words, max_tokens=max_tokens, batch_size=batch_size, device=device,
                          keep_items=keep_items)["aligned"]


def shallowness(result: dict, head: int = 5) -> float | None:
    """Share of the summed mean KL that sits in the first ``head`` positions (1.0: all of it)."""
    kl = [x for x in result.get("kl", []) if x is not None]
    total = sum(kl)
    return None if total <= 0 else sum(kl[:head]) / total


TABLE_POSITIONS = (0, 1, 2, 4, 8, 16, 32, 48)


def depth_markdown(results: dict[str, dict], positions: Sequence[int] = TABLE_POSITIONS, *, aligned: str = "aligned",
                   base: str = "base") -> list[str]:
    """Markdown lines: mean KL and refusal-token probability at a few positions, per model.
    ``aligned`` / ``base`` name the two sides (e.g. ``fine-tuned`` / ``vanilla`` when the
    "base" of the comparison is an aligned model)."""
    horizon = max((len(r["positions"]) for r in results.values()), default=0)
    shown = [t for t in positions if t < horizon]

    def fmt(xs, t):
        return "–" if t >= len(xs) or xs[t] is None else f"{xs[t]:.3f}"

    lines = ["| model | quantity | " + " | ".join(f"t={t}" for t in shown) + " | KL share in t<5 |",
             "|---|---|" + "---|" * len(shown) + "---|"]
    first = next(iter(results.values()), None)
    pieces = [t["piece"] for t in first["refusal_tokens"]] if first else []
    any_of = "P(" + " or ".join(repr(p) for p in pieces) + ")"
    for label, r in results.items():
        share = shallowness(r)
        lines.append(f"| {label} | KL({aligned}‖{base}) | " + " | ".join(fmt(r["kl"], t) for t in shown)
                     + f" | {'–' if share is None else f'{share:.0%}'} |")
        for piece, curve in (r.get("refusal_by_token") or {}).items():
            if piece == pieces[0]:
                lines.append(f"| {label} | P({piece!r}) | " + " | ".join(fmt(curve, t) for t in shown) + " | |")
        lines.append(f"| {label} | {any_of} | " + " | ".join(fmt(r["refusal"], t) for t in shown) + " | |")
    if first is not None:
        lines.append(f"| {base} | {any_of} | " + " | ".join(fmt(first["base_refusal"], t) for t in shown) + " | |")
    return lines


def write_depth(out: str | os.PathLike, results: dict[str, dict], *, dataset: str | None = None,
                projections: dict[str, dict] | None = None) -> Path:
    """Write ``depth.json``, ``depth.png`` and ``depth.md`` into ``out`` (atomically); with
    ``projections`` (:func:`deepalign.evaluation.projection.projection_profiles`) also
    ``projection.json`` and ``projection.png`` (projection next to KL and refusal)."""
    from deepalign.utils import atomic_dir, write_json

    out = Path(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / "depth.json", {"dataset": dataset, "models": results})
        plot_token_profile(results, tmp / "depth.png", title=dataset)
        if projections:
            write_json(tmp / "projection.json", {"dataset": dataset, "models": projections})
            plot_refusal_projection(projections, tmp / "projection.png", depth=results, title=dataset)
        first = next(iter(results.values()))
        head = [f"# Depth diagnostics{f' on {dataset}' if dataset else ''}", "",
                f"Base `{first['base']}` ({first['base_format']}); refusal token(s) "
                f"{', '.join(repr(t['piece']) for t in first['refusal_tokens'])}; "
                f"{first['items']} harmful responses teacher-forced through both models. KL(aligned‖base) at "
                "response position t, and P(refusal token) after t forced tokens (means over items).", ""]
        tail = ["", "![depth](depth.png)", ""] + (["![projection on the refusal direction](projection.png)", ""]
                                                 if projections else [])
        (tmp / "depth.md").write_text("\n".join(head + depth_markdown(results) + tail), encoding="utf-8")
    return out


@dataclass
class DepthOptions:
    """What ``deepalign depth`` measures: one base model, one or more aligned models, a
    dataset of harmful (query, response) items."""

    base: str | None = field(default=None, metadata={"help": "base model directory or hub id (required)"})
    aligned: list[str] = field(default_factory=list, metadata={
        "help": "aligned model directory or hub id (one curve each; --aligned A --aligned B)"})
    dataset: str | None = field(default=None, metadata={
        "help": "items with a harmful response: world:<split> (needs --world) or a dataset spec such as "
                "harmful:FILE.jsonl with query and harmful/response fields (default world:harmful with --world)"})
    world: str | None = field(default=None, metadata={"help": "the embedded world directory (for world: datasets)"})
    out: str | None = field(default=None, metadata={"help": "output directory, written atomically (required)"})
    base_format: str | None = field(default=None, metadata={
        "help": "prompt format of the base model: chat, raw, text:<template with {query}> or a .txt file "
                "(default: its chat template when it has one, else the default text template)"})
    aligned_format: str | None = field(default=None, metadata={
        "help": "prompt format of the aligned models (default: each one's chat template, as for --base_format)"})
    refusal_words: list[str] | None = field(default=None, metadata={
        "aliases": ["--refusal_word"],
        "help": "words whose tokens start a refusal (their probabilities add up; the first is also plotted alone); "
                "default: the world's refusal openers (its manifest) on world: datasets, else Sorry (sorry for "
                "lower-case vocabularies)"})
    max_tokens: int = field(default=64, metadata={"help": "response positions measured"})
    directions: list[str] = field(default_factory=list, metadata={
        "aliases": ["--direction"], "help": "refusal direction of each aligned model (deepalign direction), in --aligned order: adds the "
                "projection on it along the harmful responses (projection.json, projection.png)"})
    batch_size: int = 32
    device: str | None = field(default=None, metadata={"help": "device (default: cuda when available)"})
    quiet: bool = False

    def __post_init__(self):
        if isinstance(self.aligned, str):
            self.aligned = [self.aligned]
        if isinstance(self.directions, str):
            self.directions = [self.directions]
        number("max_tokens", self.max_tokens, low=1, integer=True)
        number("batch_size", self.batch_size, low=1, integer=True)

    def check(self) -> None:
        """The options a run needs (a Python caller may fill them in after construction)."""
        if not self.base:
            raise OptionError("base", "is required (the base model directory or hub id)")
        if not self.aligned:
            raise OptionError("aligned", "is required (one or more aligned models)")
        if not self.out:
            raise OptionError("out", "is required (the output directory)")
        if self.dataset is None and self.world is None:
            raise OptionError("dataset", "is required (or --world DIR to use world:harmful)")
        if self.directions and len(self.directions) != len(self.aligned):
            raise OptionError("directions", f"gives {len(self.directions)} directions for {len(self.aligned)} aligned "
                                            "models (one per --aligned, in order)")


def _refusal_words(opts: DepthOptions, spec: str) -> list[str] | None:
    """The refusal words asked for, else the world manifest's refusal openers for a world
    dataset (None: the tokenizer's default, ``Sorry``)."""
    if opts.refusal_words:
        return split_list(opts.refusal_words)
    if spec.startswith("world:") and opts.world:
        from deepalign.world.generator import refusal_openers

        return refusal_openers(opts.world)
    return None


def run_depth(options: DepthOptions | None = None, data=None, **kwargs) -> dict[str, dict]:
    """Measure and write the depth diagnostics of ``options`` (see :class:`DepthOptions`);
    ``data``: :class:`~deepalign.data.datasets.DataOptions` (``--limit``, ``--sample``, ...).
    Returns label -> result, as :func:`depth_profiles`.

    Example (``runs/base`` and ``runs/derta`` from the ``pretrain`` and ``train`` examples)::

        >>> results = run_depth(base="runs/base", aligned=["runs/derta"], world="runs/world",
        ...                     out="runs/depth", limit=4, max_tokens=8, quiet=True)
        >>> sorted(results), len(results["derta"]["kl"])
        (['derta'], 8)
    """
    from deepalign.data.datasets import DATA_NEEDS, DataOptions, load_dataset
    from deepalign.models import model_source
    from deepalign.tokens import PromptFormat
    from deepalign.utils import check_writable_dir, quiet_libraries

    opts, data = build(kwargs, needs=DATA_NEEDS, options=(DepthOptions, options), data=(DataOptions, data))
    opts.check()
    for spec in (opts.base, *opts.aligned):  # every model path checked before any work
        model_source(spec)
    for spec, direction in zip(opts.aligned, opts.directions):
        from deepalign.decoding.registry import check_model
        from deepalign.decoding.spec import Direction

        check_model(spec, Direction(direction))
    for fmt in (opts.base_format, opts.aligned_format):
        if fmt:
            PromptFormat.parse(fmt)
    check_writable_dir(opts.out)
    spec = opts.dataset or "world:harmful"
    items = load_dataset(spec, world=opts.world, options=data)
    labels = [Path(a).name or a for a in opts.aligned]
    if len(set(labels)) != len(labels):
        labels = list(opts.aligned)
    with quiet_libraries(opts.quiet):
        results = depth_profiles(opts.base, dict(zip(labels, opts.aligned)), items, base_format=opts.base_format,
                                 aligned_format=opts.aligned_format, refusal_words=_refusal_words(opts, spec),
                                 max_tokens=opts.max_tokens, batch_size=opts.batch_size, device=opts.device)
        projections = None
        if opts.directions:
            from deepalign.evaluation.projection import projection_profiles

            projections = projection_profiles(dict(zip(labels, opts.aligned)), dict(zip(labels, opts.directions)), items,
                                              prompt_format=opts.aligned_format, max_tokens=opts.max_tokens,
                                              batch_size=opts.batch_size, device=opts.device)
        write_depth(opts.out, results, dataset=spec, projections=projections)
    if not opts.quiet:
        for label, r in results.items():
            share = shallowness(r)
            print(f"{label}: KL at t=0 {r['kl'][0]:.3f}, share of KL in the first 5 tokens "
                  f"{'–' if share is None else f'{share:.0%}'}; P(refusal) at k=0 {r['refusal'][0]:.3f}, "
                  f"at k=8 {r['refusal'][min(8, len(r['refusal']) - 1)]:.3f} ({r['items']} items)")
        print(f"depth diagnostics -> {opts.out}")
    return results
