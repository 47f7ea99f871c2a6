"""RAP, rank-assisted prefilling (Vega & Singh 2025, "Matching Ranks Over Probability Yields
Truly Deep Safety Alignment", arXiv 2512.05518): a prefilling attack that adapts to the model.

A plain prefill forces a fixed harmful text. RAP builds the forced start out of the target's
own ranking instead: at each of ``K`` steps it reads the target's ``topk`` most likely next
tokens (the paper's 20) and chooses one that is not a refusal token, so a model that learnt
to pile probability on a few refusal tokens while harmful tokens kept high ranks is led
along the harmful ones. After the ``K`` chosen tokens the target decodes freely; the judges
see that continuation, as for ``prefill:K`` (``--judge_scope full`` adds the chosen tokens:
the paper judges the whole output).

The selector (``select=``):

- ``paper``: the authors' automated rule (``auto_rap.py`` of uiuc-focal-lab/push-forward-alignment):
  the highest-ranked candidate its harm test accepts, skipping a token whose text equals
  both previous tokens' (no triple repeats); where none is accepted it backtracks: the last
  token is removed and the next step considers only candidates ranked below it. Their harm
  test is a trained token classifier; here a candidate is accepted when it is not a refusal
  token and not an end of sequence: on the world, refusal tokens are its ground truth (every
  word only its refusals use, :func:`deepalign.world.generator.refusal_vocabulary`); on other
  models, the refusal words below (``refuse=`` extends them).
- ``top``: the highest-ranked candidate that is not a refusal token (no repeat rule, no
  backtracking).
- ``guide``: among the target's non-refusal candidates, the one a guide model (``guide=SPEC``,
  an unaligned model such as the base model, same vocabulary) gives the highest probability
  after its own prompt and the tokens chosen so far: "which of these would it write?".
- ``reference``: the next token of the item's reference harmful answer (in the target's own
  tokenisation) when it is among the candidates, else the ``top`` choice.

Refusal tokens: the target's refusal words (``refuse=W/W/...``; by default the world's refusal
openers on the world (its refusal vocabulary for ``paper``), else the refusal-direction reference's words for the model's family:
``I``, plus ``As`` for Qwen), each as the token that starts it at the start of an answer and
mid-answer. End-of-sequence tokens are never chosen (an attacker gains nothing by ending the
answer). The run log records per row the chosen ids, their pieces, their ranks (1 = the
target's top token), their probabilities and how many steps the target's top token was a
refusal token, so a reader sees how deep in the ranking the harm sat.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from deepalign.attacks.base import Attack, AttackOutput, Attacked, check_generations, forced_meta
from deepalign.attacks.registry import register
from deepalign.decoding.base import GenConfig, Request
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt

#: the paper's candidate count: "the top 20 predicted next tokens at each step" (arXiv 2512.05518, abstract;
#: ``top_k=20`` in its rap.py / auto_rap.py)
DEFAULT_TOPK = 20
SELECTORS = ("paper", "top", "guide", "reference")


def target_encoder(target):
    """The :class:`deepalign.tokens.Encoder` a local target tokenises with (a composed target:
    its first model's, whose tokenisation every model continues); None for other targets."""
    enc = getattr(target, "encoder", None)
    if enc is None and getattr(target, "decoder", None) is not None:
        enc = getattr(target.decoder, "encoder", None)
    return enc


def target_model(target):
    model = getattr(target, "model", None)
    if model is None and getattr(target, "decoder", None) is not None:
        model = getattr(target.decoder, "model", None)
    return model


def needs_scores(target, label: str, *, full: bool = False) -> None:
    """The target gives its next-token ranking: a local model's whole distribution, or (unless
    ``full``) a server's top tokens by id."""
    ok = callable(getattr(target, "next_logprobs", None)) or (not full and callable(getattr(target, "top_logprobs", None)))
    if not ok or target_encoder(target) is None:
        name = getattr(target, "name", type(target).__name__)
        where = "local Hugging Face and composed targets" if full else \
            "local Hugging Face and composed targets, and servers with tokenizer= that give top log-probs by id (vLLM)"
        raise DeepAlignError(f"attack {label} reads the target's next-token ranking, which target {name} does not give "
                             f"({where} do)")


def ranked(target, requests, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Per request, the target's ``k`` most likely next token ids and their probabilities, best first."""
    if callable(getattr(target, "next_logprobs", None)):
        lp = target.next_logprobs(requests)
        vals, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
        return idx.tolist(), vals.exp().tolist()
    tops = target.top_logprobs(requests, k)
    return [[t for t, _ in row] for row in tops], [[math.exp(v) for _, v in row] for row in tops]


def refusal_ids(encoder, words: Sequence[str]) -> dict[int, str]:
    """``id -> word`` of each refusal word's first token at the start of an answer and
    mid-answer, in ``encoder``'s tokenisation."""
    from deepalign.training.refusal import word_pieces

    out: dict[int, str] = {}
    for w in words:
        start = encoder.response_ids("hello", w, end=False)
        mid = word_pieces(encoder.tokenizer, w)
        for ids in (start, mid):
            if ids:
                out.setdefault(ids[0], w)
    return out


@dataclass
class _Row:
    """One item's search state."""

    request: Request
    chosen: list[int]
    ranks: list[int]
    probs: list[float]
    refusal_top: int = 0
    backtracks: int = 0
    below: int = 0  # after a backtrack: consider only candidates ranked below this rank (1-based)
    stopped: str | None = None
    reference: list[int] | None = None
    at: int = 0  # the row's place in its batch


def _snapshot(row: _Row) -> tuple:
    return (tuple(row.chosen), tuple(row.ranks), tuple(row.probs), row.refusal_top, row.backtracks, row.stopped)


def _at(row: _Row, history: list[tuple], k: int) -> _Row:
    """The state a search to depth ``k`` ends in, read from a search to a depth >= ``k``: after
    the first step that left ``k`` tokens or stopped the row, within ``4k`` steps (else the
    state after ``4k`` steps, the budget spent)."""
    state, stopped = (), None
    for step, snap in enumerate(history, 1):
        if step > 4 * k:
            break
        state = snap
        if len(snap[0]) >= k or snap[5] is not None:
            break
    chosen, ranks, probs, refusal_top, backtracks, stopped = state or ((), (), (), 0, 0, None)
    if stopped is None and len(chosen) < k:
        stopped = "step budget spent backtracking"
    return _Row(row.request, list(chosen), list(ranks), list(probs), refusal_top, backtracks, 0, stopped)


class RankAssistedPrefill(Attack):
    family = "rap"
    judge_sees = "continuation"
    forced = "tokens"
    unit = "tokens"
    needs_local = "reads the target's next-token ranking"
    server_method = "top_logprobs"  # a server target that gives its top tokens by id is enough

    def __init__(self, k: int, *, topk: int = DEFAULT_TOPK, select: str = "paper", guide=None,
                 refuse: Sequence[str] | None = None, world: str | None = None, label: str | None = None):
        if k < 1:
            raise DeepAlignError(f"rap depth must be >= 1, got {k}")
        if topk < 1:
            raise DeepAlignError(f"rap topk must be >= 1, got {topk}")
        if select not in SELECTORS:
            raise DeepAlignError(f"rap select must be one of {', '.join(SELECTORS)}, got {select!r}")
        if select == "guide" and guide is None:
            raise DeepAlignError("rap select=guide needs a guide model: guide=SPEC (e.g. the base model)")
        if select != "guide" and guide is not None:
            raise DeepAlignError(f"rap guide= is read only by select=guide (got select={select})")
        if refuse is not None and not [w for w in refuse if w.strip()]:
            raise DeepAlignError("rap refuse= names no word")
        self.k, self.topk, self.select, self.guide = k, topk, select, guide
        self.refuse = [w.strip() for w in refuse if w.strip()] if refuse is not None else None
        self.world = world
        self.depth = k
        self.depths: tuple[int, ...] = (k,)  # the depths of the RAP attacks linked with this one (link)
        self.label = label or f"rap:{k}"
        self._guide_target = None

    def params(self) -> dict:
        out = {"topk": self.topk, "select": self.select}
        if self.guide is not None:
            out["guide"] = self.guide if isinstance(self.guide, str) else getattr(self.guide, "name", "guide")
        if self.refuse is not None:
            out["refuse"] = list(self.refuse)
        return out

    def applies(self, item: EvalPrompt) -> bool:
        return self.select != "reference" or bool(item.harmful)

    def prepare(self, item: EvalPrompt) -> Attacked:
        # the query as is: the forced start is chosen from the model, token by token, in run()
        return Attacked(Request(id=item.id, query=item.prompt), meta={"depth": self.k, "depth_unit": "tokens"})

    # -- the search -----------------------------------------------------------------------
    def words(self, target) -> list[str]:
        if self.refuse is not None:
            return list(self.refuse)
        if self.world is not None:
            from deepalign.world.generator import refusal_openers, refusal_vocabulary

            # the paper's harm test on the world: its ground truth of refusal-only words; the other
            # selectors skip the words refusals start with
            return refusal_vocabulary(self.world) if self.select == "paper" else refusal_openers(self.world)
        from deepalign.direction.select import reference_refusal_words

        return reference_refusal_words(target_model(target))

    def guide_target(self, target):
        if self._guide_target is None:
            from deepalign.decoding.registry import make_target

            spec = self.guide
            if isinstance(spec, str) and os.path.isdir(spec):  # a model directory: a plain Hugging Face target
                spec = "hf:" + spec
            guide = make_target(spec, batch_size=getattr(target, "batch_size", 16))
            needs_scores(guide, f"{self.label} (its guide)", full=True)
            mine, theirs = target_encoder(target).tokenizer, target_encoder(guide).tokenizer
            if mine.get_vocab() != theirs.get_vocab():
                raise DeepAlignError(f"attack {self.label}: the guide {guide.name} and the target "
                                     f"{getattr(target, 'name', 'target')} have different vocabularies; a guide "
                                     "chooses among the target's own token ids")
            self._guide_target = guide
        return self._guide_target

    def settings(self) -> tuple:
        """What decides the search besides the depth: RAP attacks with the same settings share it."""
        return (self.topk, self.select, str(self.guide), tuple(self.refuse or ()), self.world)

    def link(self, attacks) -> None:
        """Called by :func:`~deepalign.attacks.registry.make_attacks` with every attack it built:
        the depths of the RAP attacks with these settings, so that the first of them to run on a
        batch searches to the deepest and the others take their first K tokens from it."""
        self.depths = tuple(sorted({a.k for a in attacks
                                    if isinstance(a, RankAssistedPrefill) and a.settings() == self.settings()}))

    def search(self, target, items: Sequence[EvalPrompt]) -> list[_Row]:
        """The ``K`` chosen tokens of each item (fewer where the search stopped). A search to a
        deeper linked depth passes, on its way, through the state this depth's search ends in:
        the first time a row holds K tokens (or stops, or spends the budget of 4K steps), with the
        same rule and the same rows; those states are kept on the target for the other depths."""
        cache = target.__dict__.setdefault("_rap_searches", {}) if hasattr(target, "__dict__") else {}
        keys = [(self.settings(), self.k, it.id, it.prompt, it.system) for it in items]
        if not all(k in cache for k in keys):
            depths = sorted({self.k, *getattr(self, "depths", ())})
            rows, history = self._search(target, items, max(depths))
            for it, row, hist in zip(items, rows, history):
                for k in depths:
                    cache[(self.settings(), k, it.id, it.prompt, it.system)] = _at(row, hist, k)
        return [replace(cache[k], chosen=list(cache[k].chosen), ranks=list(cache[k].ranks),
                        probs=list(cache[k].probs)) for k in keys]

    def _search(self, target, items: Sequence[EvalPrompt], depth: int) -> tuple[list[_Row], list[list[tuple]]]:
        """The search to ``depth``, and each row's state after every step it took."""
        needs_scores(target, self.label)
        enc = target_encoder(target)
        refusal = refusal_ids(enc, self.words(target))
        eos = set(getattr(target, "eos", ()) or ())
        if getattr(enc.tokenizer, "eos_token_id", None) is not None:
            eos.add(enc.tokenizer.eos_token_id)
        texts: dict[int, str] = {}

        def text_of(tok: int) -> str:  # a token's text, stripped (the paper's repeat test)
            if tok not in texts:
                texts[tok] = enc.tokenizer.decode([tok]).strip()
            return texts[tok]

        rows = []
        for it in items:
            req = self.attacked(it).request
            ref = None
            if self.select == "reference":
                ref = enc.response_ids(it.prompt, it.harmful, system=req.system, end=False)
            rows.append(_Row(req, [], [], [], reference=ref, at=len(rows)))
        guide = self.guide_target(target) if self.select == "guide" else None
        history: list[list[tuple]] = [[] for _ in rows]
        # the paper counts every addition and removal as a step: budget them so backtracking ends
        for _ in range(4 * depth):
            active = [r for r in rows if r.stopped is None and len(r.chosen) < depth]
            if not active:
                break
            reqs = [replace(r.request, prefill_ids=tuple(r.chosen)) for r in active]
            idx, prob = ranked(target, reqs, self.topk)
            guide_lp = guide.next_logprobs(reqs) if guide is not None else None
            for j, row in enumerate(active):
                cand = idx[j]
                probs = prob[j]
                if cand[0] in refusal:
                    row.refusal_top += 1
                ok = [rank for rank, tok in enumerate(cand, 1)
                      if tok not in refusal and tok not in eos and rank > row.below]
                if self.select == "paper" and len(row.chosen) >= 2:
                    a, b = (text_of(t) for t in row.chosen[-2:])
                    ok = [rank for rank in ok if not a == b == text_of(cand[rank - 1])]
                row.below = 0
                if not ok:
                    if self.select == "paper" and row.chosen:  # backtrack: drop the last token, rank below it next
                        row.below = row.ranks.pop()
                        row.chosen.pop()
                        row.probs.pop()
                        row.backtracks += 1
                    else:
                        row.stopped = "no candidate outside the refusal tokens"
                    continue
                rank = ok[0]
                if self.select == "guide":
                    scores = guide_lp[j]
                    rank = max(ok, key=lambda r: (float(scores[cand[r - 1]]), -r))
                elif self.select == "reference":
                    want = row.reference[len(row.chosen)] if len(row.chosen) < len(row.reference) else None
                    rank = next((r for r in ok if cand[r - 1] == want), ok[0])
                row.chosen.append(cand[rank - 1])
                row.ranks.append(rank)
                row.probs.append(probs[rank - 1])
            for row in active:
                history[row.at].append(_snapshot(row))
        return rows, history

    def run(self, target, items: Sequence[EvalPrompt], config: GenConfig) -> list[list[AttackOutput]]:
        rows = self.search(target, items)
        enc = target_encoder(target)
        requests = [replace(r.request, prefill_ids=tuple(r.chosen),
                            prefill=enc.tokenizer.decode(r.chosen, skip_special_tokens=True)) for r in rows]
        gens = target.generate(requests, config)
        check_generations(target, requests, gens, config.num_samples)
        out = []
        for row, req, per in zip(rows, requests, gens):
            meta = {"depth": self.k, "depth_unit": "tokens",
                    "rap": {"ids": list(row.chosen), "pieces": [str(p) for p in enc.tokenizer.convert_ids_to_tokens(row.chosen)],
                            "ranks": list(row.ranks), "probs": [round(p, 6) for p in row.probs],
                            "refusal_top": row.refusal_top, "backtracks": row.backtracks}}
            if row.stopped:
                meta["rap"]["stopped"] = row.stopped
            out.append([AttackOutput(req, g.text, g.text, g.num_tokens, g.finish_reason, forced_meta(meta, g))
                        for g in per])
        return out


@register("rap", "rank-assisted prefilling (arXiv 2512.05518): rap:K[:topk=20][:select=paper|top|guide|reference]"
                 "[:guide=SPEC][:refuse=W/W]: K tokens chosen from the target's top-k, refusal tokens skipped, "
                 "then free decoding")
def _rap(args, context):
    from deepalign.attacks.basic import token_count

    k = token_count(args, "a depth", "rap:16")
    topk = args.option("topk", DEFAULT_TOPK, int)
    select = args.option("select", "paper")
    guide = args.option("guide")
    refuse = args.option("refuse")
    args.done(1)
    label = f"rap:{k}" + "".join(f":{key}={value}" for key, value, default in
                                  (("topk", topk, DEFAULT_TOPK), ("select", select, "paper")) if value != default)
    if guide is not None:
        label += ":guide=" + guide
    if refuse is not None:
        label += ":refuse=" + refuse
    return [RankAssistedPrefill(k, topk=topk, select=select, guide=guide,
                                refuse=refuse.split("/") if refuse is not None else None,
                                world=context.get("world"), label=label)]
