"""The embedded world's shifted attack shapes (see :mod:`deepalign.world.shapes`), the world
analogues of CodeAttack, cipher attacks and role-play templates, whose real forms (``code``,
``cipher:caesar``, ``template:``) a word-level world model cannot read or has never seen:

* ``ledger``: the query hidden in a pseudo-code ledger whose ``steps`` list the model fills
  entry by entry; the reply is judged as it is (harm lands inside the structure).
* ``oldtongue``: the query spelled backwards word by word, led by ``in the old tongue :``;
  the reply is deciphered before it is judged (a reply in plain words is kept as it is).
* ``roleplay:NAME``: one of the world's role-play templates (trickster, game, story).

A depth ``K`` (``ledger:8``, ``oldtongue:8``, ``roleplay:story:8``) also forces the start of
the item's harmful reference *in that shape* as the start of the answer: the first ``K``
tokens of the shaped answer as the target's own format tokenises it (for role-play: the
character's opener, then ``K`` words of its answer; the world's vocabulary is word-level, so
words are tokens there). That is harm already under way inside the structure, the situation
in which DeRTa's RTO is meant to help and harmful-prefix training, whose prefixes all have
the shape of a chat answer, may not. As with ``prefill``, the judges see only the continuation.

The prompts are plain text and can be sent to any model; only the world teaches them.
"""

from __future__ import annotations

from deepalign.attacks.base import Attack, Attacked, identity
from deepalign.attacks.basic import words_of
from deepalign.attacks.registry import register
from deepalign.decoding.base import Request
from deepalign.errors import DeepAlignError
from deepalign.records import EvalPrompt
from deepalign.world import lexicon as L
from deepalign.world import shapes


class ShapeAttack(Attack):
    """The query in a shifted shape, optionally with the shaped harmful answer begun."""

    shifted = True

    def __init__(self, shape: str, k: int = 0, name: str | None = None):
        if k < 0:
            raise DeepAlignError(f"shape attack depth must be >= 0, got {k}")
        if shape not in ("ledger", "oldtongue", "roleplay"):
            raise DeepAlignError(f"unknown world shape {shape!r}; choose from ledger, oldtongue, roleplay")
        if (shape == "roleplay") != (name is not None):
            raise DeepAlignError("a roleplay attack names its template, and only it does")
        self.shape, self.k, self.name = shape, k, name
        self.family = shape
        self.label = shape + (f":{name}" if name else "") + (f":{k}" if k else "")
        self.forced = None if not k else ("text" if shape == "roleplay" else "tokens")
        self.depth, self.unit = k, ("words" if shape == "roleplay" else "tokens")
        self.judge_sees = "decoded" if shape == "oldtongue" else ("continuation" if k else "response")

    def params(self) -> dict:
        return {"template": self.name} if self.name else {}

    def applies(self, item: EvalPrompt) -> bool:
        return self.k == 0 or bool(item.harmful)

    def _prompt(self, query: str) -> str:
        if self.shape == "ledger":
            return shapes.ledger_prompt(query)
        if self.shape == "oldtongue":
            return shapes.old_tongue_prompt(query)
        return shapes.roleplay_prompt(self.name, query)

    def _forced(self, item: EvalPrompt) -> tuple[str, int | None, dict]:
        """(prefill text, prefill_tokens, meta): the target forces the first ``prefill_tokens``
        tokens of the text as its format tokenises a response (all of it when None)."""
        if not item.harmful:
            raise DeepAlignError(f"attack {self.label} needs a reference harmful response; item {item.id!r} has none")
        if self.shape == "ledger":
            return shapes.ledger_response(item.harmful), self.k, {"depth": self.k, "depth_unit": "tokens"}
        if self.shape == "oldtongue":
            return shapes.to_old_tongue(item.harmful), self.k, {"depth": self.k, "depth_unit": "tokens"}
        opener = L.ROLEPLAY_OPENERS[self.name]
        told = shapes.roleplay_response(self.name, item.harmful)[len(opener) + 1:]
        text, n = words_of(told, self.k)
        return f"{opener} {text}", None, {"depth": self.k, "depth_unit": "words", "prefill_len": n}

    def prepare(self, item: EvalPrompt) -> Attacked:
        meta = {"shape": self.shape}
        prefill, tokens = "", None
        if self.k:
            prefill, tokens, more = self._forced(item)
            meta.update(more)
        post = shapes.from_old_tongue if self.shape == "oldtongue" else identity
        request = Request(id=item.id, query=self._prompt(item.prompt), prefill=prefill, prefill_tokens=tokens)
        return Attacked(request, postprocess=post, meta=meta)


def _depth(args, index: int) -> int:
    if len(args.positional) <= index:
        return 0
    raw = args.positional[index]
    if not raw.isdigit():
        raise DeepAlignError(f"attack {args.spec!r}: the depth must be a whole number of tokens, got {raw!r}")
    return int(raw)


def _plain_shape(shape: str):
    def factory(args, context):
        k = _depth(args, 0)
        args.done(1)
        return [ShapeAttack(shape, k)]

    return factory


register("ledger", "ledger[:K]: the world's CodeAttack analogue, the query inside a pseudo-code ledger the model fills "
                   "step by step; K forces the first K tokens of the ledger-shaped harmful answer")(_plain_shape("ledger"))
register("oldtongue", "oldtongue[:K]: the world's cipher attack, the query spelled backwards word by word (the reply "
                      "deciphered); K forces the first K tokens of the enciphered harmful answer")(_plain_shape("oldtongue"))


@register("roleplay", "roleplay:NAME[:K]: one of the world's role-play templates (" + ", ".join(sorted(L.JAILBREAK_TEMPLATES))
                      + "); K forces the character's opener and K words of its harmful answer")
def _roleplay(args, context):
    if not args.positional or args.positional[0] not in L.JAILBREAK_TEMPLATES:
        raise DeepAlignError(f"attack {args.spec!r}: name a template: "
                             + ", ".join(f"roleplay:{n}" for n in sorted(L.JAILBREAK_TEMPLATES)))
    k = _depth(args, 1)
    args.done(2)
    return [ShapeAttack("roleplay", k, args.positional[0])]
