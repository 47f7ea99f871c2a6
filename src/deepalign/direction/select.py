"""Find a model's refusal direction (Arditi et al. 2024, arXiv 2406.11717): :func:`refusal_direction`.

1. **Prompts.** Harmful and harmless queries, each set shuffled with ``seed`` and split into
   ``n_val`` validation prompts and up to ``n_train`` training prompts (the reference's 32 and
   128), each rendered in the model's own prompt format (:class:`deepalign.tokens.Encoder`).
   As the reference does (``filter_train`` / ``filter_val``), harmful prompts the model does
   not refuse (refusal score <= 0) and harmless prompts it refuses (score >= 0) are dropped.
2. **Candidates.** At every layer ``l`` (``hidden_states[l]``, the input of decoder layer
   ``l``) and every post-instruction position (the tokens the prompt format puts after the
   query, counted from the end of the prompt), the difference of the mean activations of
   the harmful and the harmless training prompts.
3. **Selection**, on the validation prompts, as the reference does: for each candidate, the
   mean refusal score of harmful prompts with the candidate ablated (lower is better), the
   mean refusal score of harmless prompts with the candidate added at its layer (it must
   reach ``induce_refusal_threshold``), and the mean KL divergence of the next-token
   distribution of harmless prompts under ablation (at most ``kl_threshold``); candidates
   from the last ``prune_layer_share`` of the layers are excluded (and not scored). The
   candidate with the lowest ablated refusal score wins.

The refusal score of a prompt is the log-odds of the refusal tokens at the first response
position, ``log p - log(1 - p)`` with ``p`` the summed probability of the refusal tokens
(reference: ``refusal_score``, epsilon 1e-8). The refusal tokens are the first response token
of each refusal word as the model's format places it at the start of a response, never ids:
by default the reference's words for the model's family (``I``, and ``I`` plus ``As`` for
Qwen: :func:`reference_refusal_words`), on the world its manifest's refusal openers.

Every candidate is scored in batched forward passes: each batch row carries its own
direction to ablate or vector to add (:class:`~deepalign.direction.residual.ResidualHooks`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import number
from deepalign.registry import split_list

# Defaults of the reference implementation (andyrdt/refusal_direction, pipeline/config.py and
# pipeline/submodules/select_direction.py): prompt counts, filter thresholds, epsilons.
N_TRAIN = 128
N_VAL = 32
KL_THRESHOLD = 0.1
INDUCE_REFUSAL_THRESHOLD = 0.0
PRUNE_LAYER_SHARE = 0.2
SCORE_EPS = 1e-8
KL_EPS = 1e-6
#: the reference's refusal words per model family (andyrdt/refusal_direction,
#: pipeline/model_utils/<family>_model.py, ``*_REFUSAL_TOKS``): ``I`` alone for Llama-2
#: (llama2_model.py, [306]), Llama-3 (llama3_model.py, [40]), Gemma (gemma_model.py, [235285])
#: and Yi (yi_model.py, [59597]) ...
DEFAULT_REFUSAL_WORDS = ("I",)
#: ... and ``I`` plus ``As`` for Qwen (qwen_model.py: QWEN_REFUSAL_TOKS = [40, 2121], 'I', 'As')
QWEN_REFUSAL_WORDS = ("I", "As")
#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054


@dataclass
class DirectionOptions:
    """What ``deepalign direction`` computes: one model, harmful and harmless prompt sets."""

    model: str | None = field(default=None, metadata={"help": "model directory or hub id (required)"})
    harmful: str | None = field(default=None, metadata={
        "help": "harmful queries: a dataset spec (default world:harmful with --world)"})
    harmless: str | None = field(default=None, metadata={
        "help": "harmless queries: a dataset spec (default world:benign with --world)"})
    world: str | None = field(default=None, metadata={"help": "the embedded world directory (for world: datasets)"})
    out: str | None = field(default=None, metadata={"help": "output directory, written atomically (required)"})
    prompt_format: str | None = field(default=None, metadata={
        "help": "chat, raw, text:<template with {query}> or a .txt file (default: the chat template when the "
                "tokenizer has one, else the default text template)"})
    refusal_words: list[str] | None = field(default=None, metadata={
        "aliases": ["--refusal_word"],
        "help": "words whose first response token is a refusal token, e.g. I As or I,As (default: the "
                "reference's words for the model's family: I,As for Qwen, I for Llama-2 / Llama-3 / Gemma / Yi "
                "and others; with --world the world's refusal openers from its manifest)"})
    n_train: int = field(default=N_TRAIN, metadata={"help": "training prompts per set (the difference of means)"})
    n_val: int = field(default=N_VAL, metadata={"help": "validation prompts per set (the selection)"})
    filter_prompts: bool = field(default=True, metadata={
        "help": "drop harmful prompts the model does not refuse and harmless ones it refuses (as the reference)"})
    kl_threshold: float | None = field(default=KL_THRESHOLD, metadata={
        "help": "largest mean KL on harmless prompts under ablation a candidate may cause (none: no limit; null "
                "in a config file)"})
    induce_refusal_threshold: float | None = field(default=INDUCE_REFUSAL_THRESHOLD, metadata={
        "help": "smallest mean refusal score on harmless prompts with the candidate added (none: no limit, "
                "the filter off; null in a config file)"})
    prune_layer_share: float = field(default=PRUNE_LAYER_SHARE, metadata={
        "help": "share of the last layers whose candidates are excluded"})
    seed: int = field(default=0, metadata={"help": "seed of the train / validation split"})
    batch_size: int = 32
    device: str | None = field(default=None, metadata={"help": "device (default: cuda when available)"})
    quiet: bool = False

    def __post_init__(self):
        number("n_train", self.n_train, low=1, integer=True)
        number("n_val", self.n_val, low=1, integer=True)
        number("kl_threshold", self.kl_threshold, low=0, optional=True)
        number("induce_refusal_threshold", self.induce_refusal_threshold, optional=True)
        number("prune_layer_share", self.prune_layer_share, low=0, high=1, high_open=True)
        number("seed", self.seed, integer=True)
        number("batch_size", self.batch_size, low=1, integer=True)

    def check(self) -> None:
        if not self.model:
            raise OptionError("model", "is required (the model directory or hub id)")
        if not self.out:
            raise OptionError("out", "is required (the output directory)")
        for name in ("harmful", "harmless"):
            if getattr(self, name) is None and self.world is None:
                raise OptionError(name, "is required (a dataset spec, or --world DIR for the world's prompts)")


# -- prompts and tokens ----------------------------------------------------------------------


def split_prompts(queries: Sequence[Any], n_train: int, n_val: int, seed: int, what: str) -> tuple[list, list]:
    """``(train, val)``: ``queries`` shuffled with ``seed``; the first ``n_val`` validate, up to
    ``n_train`` of the rest train."""
    if len(queries) <= n_val:
        raise DeepAlignError(f"the {what} set has {len(queries)} prompt{'' if len(queries) == 1 else 's'}: too few for {n_val} validation prompts plus "
                             f"at least one to compute the direction from; give more prompts or a smaller --n_val")
    order = list(queries)
    random.Random(seed).shuffle(order)
    return order[n_val: n_val + n_train], order[:n_val]


def refusal_tokens(encoder, words: Sequence[str], query: str) -> list[dict]:
    """The first response token of each refusal word, as the model's format starts a
    response; a lower-case vocabulary's spelling is accepted. A word that is not one known
    token there raises :class:`DeepAlignError`."""
    unk = getattr(encoder.tokenizer, "unk_token_id", None)
    out: dict[int, dict] = {}
    for word in words:
        word = word.strip()
        if not word or len(word.split()) != 1:
            raise DeepAlignError(f"refusal word must be a single word, got {word!r}")
        found = None
        for cand in dict.fromkeys([word, word.lower()]):
            ids = encoder.response_ids(query, cand, end=False)
            if len(ids) == 1 and ids[0] != unk:
                found = ids[0]
                break
        if found is None:
            pieces = encoder.tokenizer.convert_ids_to_tokens(encoder.response_ids(query, word, end=False))
            raise DeepAlignError(f"refusal word {word!r} is not one known token at the start of a response of "
                                 f"{encoder.name} (it becomes {pieces}); give --refusal_words with words this tokenizer reads as one "
                                 "token at the start of a response")
        out.setdefault(found, {"word": word, "id": found, "piece": str(encoder.tokenizer.convert_ids_to_tokens(found))})
    return list(out.values())


def reference_refusal_words(model) -> list[str]:
    """The reference's refusal words for ``model``'s family: ``I`` and ``As`` for a Qwen model
    (its ``config.model_type`` starts with ``qwen``: qwen, qwen2, qwen2_moe, qwen3, ...), else
    ``I`` (Llama-2, Llama-3, Gemma, Yi and every other family). The reference picks its Qwen
    class by the model path (``'qwen' in model_path.lower()``, model_factory.py); the model's
    own type names the family whatever its directory is called."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "").lower()
    return list(QWEN_REFUSAL_WORDS if model_type.startswith("qwen") else DEFAULT_REFUSAL_WORDS)


def default_refusal_words(world: str | None) -> list[str] | None:
    """On the world every word its refusals start with (the manifest's refusal openers); else
    None: the reference's words for the model's family (:func:`reference_refusal_words`)."""
    if world is None:
        return None
    from deepalign.world.generator import refusal_openers

    return refusal_openers(world)


# -- forward passes --------------------------------------------------------------------------


class Runner:
    """Batched forward passes of one model over token rows (left-padded), with per-row
    residual edits, returning the last position's logits and optionally activations."""

    def __init__(self, model, stream, pad_id: int, batch_size: int):
        import inspect

        from deepalign.direction.residual import ResidualHooks

        self.model, self.stream, self.pad, self.batch_size = model, stream, pad_id, batch_size
        self.device = next(model.parameters()).device
        self.hooks = ResidualHooks(stream)
        self.keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    @torch.inference_mode()
    def run(self, rows: list[list[int]], *, ablate: torch.Tensor | None = None,
            add: tuple[list[int], torch.Tensor] | None = None, reduce=None, hidden: bool = False) -> torch.Tensor:
        """Per row, ``reduce(index, logits, hidden_states)`` of its batch (default: the last
        position's logits, float32 on the CPU), concatenated. ``ablate``: one unit direction
        per row (zero rows: no ablation); ``add``: (layer per row, vector per row) added to
        that layer's input; ``hidden``: pass the batch's ``hidden_states`` to ``reduce``."""
        from deepalign.models import left_pad

        out = []
        with self.hooks:
            for start in range(0, len(rows), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(rows))))
                ids, mask = left_pad([rows[i] for i in idx], self.pad, self.device)
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                self.hooks.ablate = ablate[idx].to(self.device) if ablate is not None else None
                self.hooks.add = {}
                if add is not None:
                    layers, vecs = add
                    for layer in sorted({layers[i] for i in idx}):
                        sel = torch.tensor([layers[i] == layer for i in idx], device=self.device)
                        self.hooks.add[layer] = vecs[idx].to(self.device) * sel[:, None]
                extra = {"logits_to_keep": 1} if self.keep_arg else {}
                res = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=hidden,
                                 use_cache=False, **extra)
                logits = res.logits[:, -1].float().cpu()
                out.append(logits if reduce is None else reduce(idx, logits, res.hidden_states if hidden else None))
        return torch.cat(out) if out else torch.zeros(0)


def refusal_scores(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Per row, the log-odds of the refusal tokens (the reference's ``refusal_score``)."""
    probs = logits.to(torch.float64).softmax(-1)
    p = probs[:, list(ids)].sum(-1)
    return torch.log(p + SCORE_EPS) - torch.log(1 - p + SCORE_EPS)


def kl_divergence(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per row, KL(base || other) of next-token distributions (the reference's ``kl_div_fn``)."""
    p = base.to(torch.float64).softmax(-1)
    q = other.to(torch.float64).softmax(-1)
    return (p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS))).sum(-1)


# -- the steps -------------------------------------------------------------------------------


@dataclass
class _Set:
    """One prompt set's split: items and token rows, and what the filter kept."""

    what: str
    train: list
    val: list
    train_rows: list[list[int]]
    val_rows: list[list[int]]
    train_keep: list[bool] = field(default_factory=list)
    val_keep: list[bool] = field(default_factory=list)
    val_logits: torch.Tensor | None = None  #: the model's own last-position logits on ``val``

    def record(self, spec: str | None) -> dict:
        def rows(items, ids, keep):
            return [{"id": _item_id(it, i), "ids": r} for i, (it, r, k) in enumerate(zip(items, ids, keep)) if k]

        def dropped(items, keep):
            return [_item_id(it, i) for i, (it, k) in enumerate(zip(items, keep)) if not k]

        return {"dataset": spec, "train": rows(self.train, self.train_rows, self.train_keep),
                "val": rows(self.val, self.val_rows, self.val_keep),
                "dropped_by_filter": {"train": dropped(self.train, self.train_keep),
                                      "val": dropped(self.val, self.val_keep)}}


def _item_id(item, index: int) -> str:
    return str(getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else None) or f"item-{index}")


def _query(item) -> str:
    if isinstance(item, str):
        return item
    text = getattr(item, "prompt", None) or getattr(item, "query", None)
    if text is None and isinstance(item, dict):
        text = item.get("prompt") or item.get("query")
    if not isinstance(text, str) or not text.strip():
        raise DeepAlignError(f"prompt item {item!r} has no query text")
    return text


def _kept(what: str, part: str, keep: list[bool], refused: bool) -> None:
    if not any(keep):
        verb = "refuses none" if refused else "refuses every one"
        raise DeepAlignError(f"after filtering by refusal score (as the reference does), no {what} {part} prompt is left: "
                             f"the model {verb} of its {len(keep)} {what} {part} prompts; give other prompts or "
                             "--filter_prompts false")


def _mean_diffs(runner: Runner, sets: dict[str, _Set], n_post: int, refusal_ids, filter_prompts: bool):
    """Mean activations of the kept training prompts of each set at the post-instruction
    positions of every layer; the filter decides per row from the same forward pass."""
    L = runner.stream.num_layers
    means = {}
    for key, s in sets.items():
        total = torch.zeros(n_post, L, runner.stream.hidden_size, dtype=torch.float64)

        def reduce(idx, logits, hidden, total=total, harmful=key == "harmful"):
            scores = refusal_scores(logits, refusal_ids)
            keep = (scores > 0) if harmful else (scores < 0)
            if not filter_prompts:
                keep = torch.ones_like(keep)
            acts = torch.stack([hidden[l][:, -n_post:] for l in range(L)], dim=2).to(torch.float64).cpu()
            total.add_(acts[keep].sum(0))
            return keep

        keep = runner.run(s.train_rows, reduce=reduce, hidden=True).tolist()
        _kept(s.what, "training", keep, key == "harmful")
        s.train_keep = keep
        means[key] = total / sum(keep)
    return means["harmful"], means["harmless"]


def _filter_val(runner: Runner, sets: dict[str, _Set], refusal_ids, filter_prompts: bool) -> None:
    """The validation prompts' baseline logits (kept for the selection) and the filter."""
    for key, s in sets.items():
        s.val_logits = runner.run(s.val_rows)
        if not filter_prompts:
            s.val_keep = [True] * len(s.val_rows)
            continue
        scores = refusal_scores(s.val_logits, refusal_ids)
        s.val_keep = ((scores > 0) if key == "harmful" else (scores < 0)).tolist()
        _kept(s.what, "validation", s.val_keep, key == "harmful")


def _candidates(diff: torch.Tensor, mu_h: torch.Tensor, mu_b: torch.Tensor, prune_share: float) -> list[dict]:
    n_post, L, _ = diff.shape
    cut = int(L * (1.0 - prune_share))  # the reference's prune rule: layer >= int(n_layer * (1 - share))
    out = []
    for p in range(n_post):
        for layer in range(L):
            norm = float(diff[p, layer].norm())
            ref = max(float(mu_h[p, layer].norm()), float(mu_b[p, layer].norm()), 1e-30)
            excluded = "last layers" if layer >= cut else ("no difference" if norm <= 1e-6 * ref else None)
            out.append({"position": p - n_post, "layer": layer, "norm": norm, "refusal_score": None,
                        "steering_score": None, "kl": None, "excluded": excluded})
    return out


def _score(runner: Runner, cands: list[dict], diff: torch.Tensor, sets: dict[str, _Set], refusal_ids) -> dict:
    """Fill in every eligible candidate's scores on the kept validation prompts; return the
    baseline scores. One batched pass: each row carries its candidate's edit."""
    n_post, d = diff.shape[0], diff.shape[-1]
    harm = [r for r, k in zip(sets["harmful"].val_rows, sets["harmful"].val_keep) if k]
    safe = [r for r, k in zip(sets["harmless"].val_rows, sets["harmless"].val_keep) if k]
    base_harm = sets["harmful"].val_logits[torch.tensor(sets["harmful"].val_keep)]
    base_safe = sets["harmless"].val_logits[torch.tensor(sets["harmless"].val_keep)]
    baseline = {"harmful_refusal_score": float(refusal_scores(base_harm, refusal_ids).mean()),
                "harmless_refusal_score": float(refusal_scores(base_safe, refusal_ids).mean())}
    todo = [c for c in cands if c["excluded"] is None]
    rows, ablate, layers, vecs, kl_ref = [], [], [], [], []
    zero = torch.zeros(d)
    for c in todo:
        vec = diff[c["position"] + n_post, c["layer"]].to(torch.float32)
        n = len(harm) + len(safe)  # ablation: refusal on harmful prompts, KL on harmless ones
        rows += harm + safe
        ablate += [vec / vec.norm()] * n
        layers += [0] * n
        vecs += [zero] * n
        kl_ref += [-1] * len(harm) + list(range(len(safe)))
        rows += safe  # activation addition at the candidate's layer: induced refusal
        ablate += [zero] * len(safe)
        layers += [c["layer"]] * len(safe)
        vecs += [vec] * len(safe)
        kl_ref += [-1] * len(safe)
    if not todo:
        return baseline

    def reduce(idx, logits, _):
        kl = torch.full((len(idx),), float("nan"), dtype=torch.float64)
        ref = torch.tensor([kl_ref[i] for i in idx])
        has = ref >= 0
        if bool(has.any()):
            kl[has] = kl_divergence(base_safe[ref[has]], logits[has])
        return torch.stack([refusal_scores(logits, refusal_ids), kl], dim=-1)

    out = runner.run(rows, ablate=torch.stack(ablate), add=(layers, torch.stack(vecs)), reduce=reduce)
    per = len(harm) + 2 * len(safe)
    for k, c in enumerate(todo):
        chunk = out[k * per: (k + 1) * per]
        c["refusal_score"] = float(chunk[: len(harm), 0].mean())
        c["kl"] = float(chunk[len(harm): len(harm) + len(safe), 1].mean())
        c["steering_score"] = float(chunk[len(harm) + len(safe):, 0].mean())
    return baseline


def _select(cands: list[dict], kl_threshold: float | None, induce_threshold: float | None) -> dict:
    """The reference's filter (a threshold of None: no limit, as in the reference), then the
    lowest ablated refusal score."""
    import math

    passing = []
    for c in cands:
        if c["excluded"] is not None:
            continue
        scores = (c["refusal_score"], c["steering_score"], c["kl"])
        if any(math.isnan(x) for x in scores):
            c["excluded"] = "not a number"
        elif kl_threshold is not None and c["kl"] > kl_threshold:
            c["excluded"] = f"KL {c['kl']:.3g} > {kl_threshold:g}"
        elif induce_threshold is not None and c["steering_score"] < induce_threshold:
            c["excluded"] = f"induced refusal score {c['steering_score']:.3g} < {induce_threshold:g}"
        else:
            passing.append(c)
    if not passing:
        scored = [c for c in cands if c["refusal_score"] is not None]
        if not scored:
            late = sum(c["excluded"] == "last layers" for c in cands)
            raise DeepAlignError(f"all {len(cands)} candidate directions are excluded before scoring: {late} from the "
                                 f"last layers, {len(cands) - late} with no difference between the two sets; give a "
                                 "smaller --prune_layer_share")
        best = min(scored, key=lambda c: c["refusal_score"])
        hint = (f"; the lowest ablated refusal score was layer {best['layer']} position {best['position']} "
                f"({best['excluded']})")
        limits = [f"KL <= {kl_threshold:g}"] if kl_threshold is not None else []
        limits += [f"induced refusal >= {induce_threshold:g}"] if induce_threshold is not None else []
        flag = "--kl_threshold" if str(best["excluded"]).startswith("KL") else "--induce_refusal_threshold"
        raise DeepAlignError(f"no candidate direction passes the selection ({', '.join(limits + ['last layers excluded'])})"
                             f"{hint}; relax {flag} (a looser value, or {flag} none to turn that filter off)")
    return min(passing, key=lambda c: (c["refusal_score"], c["layer"], c["position"]))


# -- the stage -------------------------------------------------------------------------------


def find_direction(model, tokenizer, harmful: Sequence[Any], harmless: Sequence[Any], *, name: str | None = None,
                   prompt_format=None, refusal_words: Sequence[str] | None = None, n_train: int = N_TRAIN,
                   n_val: int = N_VAL, filter_prompts: bool = True, kl_threshold: float | None = KL_THRESHOLD,
                   induce_refusal_threshold: float | None = INDUCE_REFUSAL_THRESHOLD,
                   prune_layer_share: float = PRUNE_LAYER_SHARE, seed: int = 0, batch_size: int = 32,
                   datasets: tuple[str | None, str | None] = (None, None)):
    """The refusal direction of a loaded ``model`` / ``tokenizer`` (module doc), as a
    :class:`~deepalign.direction.store.Direction` (not yet saved). ``harmful`` / ``harmless``:
    query strings or items with a ``prompt`` / ``query`` (and ``id``). ``refusal_words``: None
    takes the reference's words for the model's family (:func:`reference_refusal_words`)."""
    from deepalign.models import eos_ids, pad_id
    from deepalign.direction.residual import residual_stream
    from deepalign.direction.store import Direction, model_identity
    from deepalign.tokens import Encoder

    started = time.time()
    name = name or getattr(model, "name_or_path", "") or type(model).__name__
    stream = residual_stream(model)
    encoder = Encoder(tokenizer, prompt_format, name=name)
    h_train, h_val = split_prompts(list(harmful), n_train, n_val, seed, "harmful")
    b_train, b_val = split_prompts(list(harmless), n_train, n_val, seed, "harmless")
    words = split_list(refusal_words) if refusal_words else reference_refusal_words(model)
    refusal = refusal_tokens(encoder, words, _query(h_val[0]))
    ids = [t["id"] for t in refusal]
    sets = {}
    for key, what, train, val in (("harmful", "harmful", h_train, h_val), ("harmless", "harmless", b_train, b_val)):
        rows = [encoder.prompt_ids(_query(it)) for it in train + val]
        sets[key] = _Set(what, train, val, rows[: len(train)], rows[len(train):])
    all_queries = [_query(it) for it in h_train + h_val + b_train + b_val]
    n_post = min(encoder.after_query(q) for q in all_queries) or 1  # nothing after the query: its last token
    runner = Runner(model, stream, pad_id(tokenizer, eos_ids(model, tokenizer)), batch_size)
    mu_h, mu_b = _mean_diffs(runner, sets, n_post, ids, filter_prompts)
    _filter_val(runner, sets, ids, filter_prompts)
    diff = mu_h - mu_b
    cands = _candidates(diff, mu_h, mu_b, prune_layer_share)
    baseline = _score(runner, cands, diff, sets, ids)
    best = _select(cands, kl_threshold, induce_refusal_threshold)
    p, layer = best["position"] + n_post, best["layer"]
    vec = diff[p, layer]
    r = (vec / vec.norm()).to(torch.float32)
    tail = sets["harmful"].val_rows[0][-n_post:]
    info = {
        "mean_projection": {"harmful": float(mu_h[p, layer] @ r.double()), "harmless": float(mu_b[p, layer] @ r.double())},
        "selected": {k: best[k] for k in ("refusal_score", "steering_score", "kl")},
        "baseline": baseline,
        "refusal_tokens": refusal,
        "post_instruction": {"count": n_post, "ids": tail, "pieces": tokenizer.convert_ids_to_tokens(tail)},
        "prompt_format": encoder.format.describe(),
        "settings": {"n_train": n_train, "n_val": n_val, "filter_prompts": filter_prompts, "kl_threshold": kl_threshold,
                     "induce_refusal_threshold": induce_refusal_threshold, "prune_layer_share": prune_layer_share,
                     "seed": seed},
        "candidates": cands,
        "prompts": {"harmful": sets["harmful"].record(datasets[0]), "harmless": sets["harmless"].record(datasets[1])},
        "seconds": round(time.time() - started, 2),
    }
    return Direction(r, layer, best["position"], float(vec.norm()), model_identity(model, name), info,
                     diff.to(torch.float32))


def refusal_direction(options: DirectionOptions | None = None, data=None, **kwargs):
    """Compute, select and write a model's refusal direction (see :class:`DirectionOptions`);
    ``data``: :class:`~deepalign.data.datasets.DataOptions` (``--limit``, ``--sample``, ...,
    applied to each prompt set). Returns the :class:`~deepalign.direction.store.Direction`.

    Example on the world of the ``build_world`` example, with a two-layer toy model (a
    one-layer model has no candidate: at the post-instruction token ``<assistant>`` its only
    residual input, the embedding, is the same for every prompt). A toy model refuses
    nothing, so the reference's filters are turned off::

        >>> from deepalign import pretrain
        >>> _ = pretrain(world="runs/world", out="runs/base2", hidden_size=32, num_layers=2, num_heads=2,
        ...              intermediate_size=64, max_steps=5, quiet=True)
        >>> d = refusal_direction(model="runs/base2", world="runs/world", out="runs/direction", n_val=8,
        ...                       filter_prompts=False, prune_layer_share=0, kl_threshold=100,
        ...                       induce_refusal_threshold=-100, quiet=True)
        >>> d.vector.shape[0] == d.model["hidden_size"], d.position, d.layer
        (True, -1, 1)
    """
    from deepalign.data.datasets import DATA_NEEDS, DataOptions, load_dataset
    from deepalign.models import load_causal_lm, load_tokenizer, model_source
    from deepalign.options import build
    from deepalign.tokens import PromptFormat
    from deepalign.utils import check_writable_dir, quiet_libraries

    opts, data = build(kwargs, needs=DATA_NEEDS, options=(DirectionOptions, options), data=(DataOptions, data))
    opts.check()
    model_source(opts.model)
    if opts.prompt_format:
        PromptFormat.parse(opts.prompt_format)
    check_writable_dir(opts.out, replaces="direction.json")
    harmful_spec, harmless_spec = opts.harmful or "world:harmful", opts.harmless or "world:benign"
    words = split_list(opts.refusal_words) if opts.refusal_words else default_refusal_words(opts.world)
    harmful = load_dataset(harmful_spec, world=opts.world, options=data)
    harmless = load_dataset(harmless_spec, world=opts.world, options=data)
    for what, items in (("harmful", harmful), ("harmless", harmless)):
        split_prompts(items, opts.n_train, opts.n_val, opts.seed, what)  # too small: fail before loading the model
    with quiet_libraries(opts.quiet):
        tokenizer = load_tokenizer(opts.model)
        model = load_causal_lm(opts.model, device=opts.device or "auto")
        direction = find_direction(model, tokenizer, harmful, harmless, name=opts.model, prompt_format=opts.prompt_format,
                                   refusal_words=words, n_train=opts.n_train, n_val=opts.n_val,
                                   filter_prompts=opts.filter_prompts, kl_threshold=opts.kl_threshold,
                                   induce_refusal_threshold=opts.induce_refusal_threshold,
                                   prune_layer_share=opts.prune_layer_share, seed=opts.seed,
                                   batch_size=opts.batch_size, datasets=(harmful_spec, harmless_spec))
        direction.save(opts.out)
    if not opts.quiet:
        sel, base = direction.info["selected"], direction.info["baseline"]
        print(f"refusal direction of {opts.model}: layer {direction.layer}, position {direction.position} "
              f"({direction.info['post_instruction']['pieces'][direction.position]!r}); refusal score on harmful "
              f"prompts {base['harmful_refusal_score']:.2f} -> {sel['refusal_score']:.2f} ablated, on harmless "
              f"{base['harmless_refusal_score']:.2f} -> {sel['steering_score']:.2f} added; KL {sel['kl']:.3f} "
              f"({direction.info['seconds']:.1f}s) -> {opts.out}")
    return direction


def harmless_kl(model, direction, queries: Sequence[Any], *, tokenizer=None, prompt_format=None, batch_size: int = 32,
                allow_foreign: bool = False, device: str | None = None) -> dict:
    """How much ablating ``direction`` changes ``model`` on ``queries`` (harmless ones, say):
    per query, KL(p || p_ablated) of the next-token distribution at the first response
    position (the reference's KL score), and its mean over queries with a 95% interval
    (normal approximation). ``model``: a directory / hub id, or a loaded model with its
    ``tokenizer``; ``direction``: a directory or a loaded Direction."""
    import os

    from deepalign.models import eos_ids, pad_id
    from deepalign.direction.residual import residual_stream
    from deepalign.direction.store import load_direction
    from deepalign.models import load_causal_lm, load_tokenizer
    from deepalign.tokens import Encoder

    d = load_direction(direction)
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        tokenizer = load_tokenizer(model)
        model = load_causal_lm(model, device=device or "auto")
    if tokenizer is None:
        raise DeepAlignError("harmless_kl needs a tokenizer with a loaded model")
    stream = residual_stream(model)
    d.check_model(model, name, allow_foreign=allow_foreign)
    encoder = Encoder(tokenizer, prompt_format, name=name)
    rows = [encoder.prompt_ids(_query(q)) for q in queries]
    if not rows:
        raise DeepAlignError("harmless_kl needs at least one query")
    runner = Runner(model, stream, pad_id(tokenizer, eos_ids(model, tokenizer)), batch_size)
    base = runner.run(rows)
    ablated = runner.run(rows, ablate=d.vector.expand(len(rows), -1))
    kl = kl_divergence(base, ablated)
    n = len(rows)
    half = Z95 * float(kl.std(unbiased=True)) / n ** 0.5 if n > 1 else 0.0
    mean = float(kl.mean())
    return {"kl": mean, "kl_ci95": [mean - half, mean + half], "n": n, "per_query": kl.tolist()}
