"""The options of ``deepalign train`` and :func:`deepalign.train`: one class per family of
recipes, as TRL has one config per trainer.

* :class:`BaseTrainOptions`: what every recipe reads: the recipe, the model and how it is
  loaded (TRL ``ModelConfig`` names: ``dtype``, ``trust_remote_code``, LoRA), the world and the
  prompt format, run control.
* :class:`DeRTaOptions`: the DeRTa family (vanilla, harmful-prefix, rto, derta), trained on
  records built from (query, harmful, safe) triples and helpful pairs: the mixture, the
  harmful prefix, the RTO share, the refusal word.
* :class:`DPOOptions`: the DPO baseline (dpo): the triples and ``beta``.
* :class:`FinetuneAttackOptions`: the fine-tuning attacks (sft, identity-shift) on
  (instruction, response) pairs: the dataset, the persona, the objective (plain MLE or Qi et
  al. 2025's token-wise constrained one and its knobs), ``--reference_setup``.

``deepalign train --recipe X`` stays one command: :class:`TrainOptions` holds every family's
options in one class (it is each of them at once), which the command line and ``--config``
files fill; :func:`deepalign.training.finetune.train` hands the recipe its own family's
object (:meth:`TrainOptions.family`). An option of another family is refused by
:data:`TRAIN_NEEDS` (``--persona is read only with --recipe identity-shift; here it would be
ignored``): the table's entries for "this family's recipes" come from the classes
(:func:`family_needs`), the rest names the further setting an option needs within its
family. The Trainer's own settings are in :class:`~deepalign.training.trainer.DeRTaConfig`
under their Hugging Face names, the data options in
:class:`~deepalign.data.datasets.DataOptions`. The output is ``--out`` (``out=``; the
spellings ``--output_dir`` and ``--out_dir`` are aliases): the final model directory, whose
``checkpoints/`` is the Trainer's ``output_dir``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deepalign.data.datasets import DATA_NEEDS
from deepalign.data.recipes import DEFAULT_REFUSAL_PREFIX, PAIR_RECIPES, PERSONAS, PREFIX_UNITS, RECIPES, RECORD_RECIPES, RTO_RECIPES
from deepalign.errors import OptionError
from deepalign.models import DTYPES
from deepalign.options import Condition, Is, Off, On, choice, exclusive, number

DEFAULT_WORLD = "runs/world"
DEFAULT_BASE = "runs/base"
DEFAULT_DPO_BASE = "runs/vanilla"
DEFAULT_PAIRS = "world:ft/harmful"
DEFAULT_BENIGN_PAIRS = "world:ft/benign"  # refusal-prefix: benign answers after a refusal
OBJECTIVES = ("mle", "constrained")
#: the recipes that build their records with a harmful prefix
PREFIX_RECIPES = ("harmful-prefix", "derta")


@dataclass
class BaseTrainOptions:
    """What every recipe reads (the Trainer's own settings are in ``DeRTaConfig``)."""

    #: the recipes of this class's family
    RECIPES: ClassVar[tuple[str, ...]] = RECIPES
    #: the model a recipe of the family starts from when none is given
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_BASE

    recipe: str = "derta"
    model_name_or_path: str | None = field(default=None, metadata={
        "aliases": ["--model"], "help": f"base model dir or hub id (default {DEFAULT_BASE}; for dpo, sft and "
                                        f"identity-shift the aligned {DEFAULT_DPO_BASE})"})
    out: str | None = field(default=None, metadata={
        "aliases": ["--output_dir", "--output-dir", "--out_dir", "--out-dir"],
        "help": "the final model directory (default runs/<recipe>[-constrained][-lora]); checkpoints go to "
                "<out>/checkpoints"})
    world: str = field(default=DEFAULT_WORLD, metadata={"help": "world dir whose train/ split is the default data"})
    prompt_format: str | None = field(default=None, metadata={
        "was": {"--prompt-template": "a template is written text:<template with {query}>"},
        "help": "chat, text (the default text template), text:<template with {query}>, raw, or a .txt template "
                "file (default: the tokenizer's chat template, else the default text template)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt of every training conversation"})
    chat_template: str | None = field(default=None, metadata={
        "help": "a Jinja chat template (file) replacing the tokenizer's own; it is saved with the model"})
    # model (TRL ModelConfig names)
    dtype: str = field(default="float32", metadata={"help": "dtype the weights are loaded in: float32, bfloat16, "
                                                            "float16 or auto"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run the model repository's own code"})
    use_peft: bool = field(default=False, metadata={"aliases": ["--lora"],
                                                   "help": "train a LoRA adapter (merged into the saved model)"})
    lora_r: int = 16
    lora_alpha: int | None = field(default=None, metadata={"help": "default 2 * lora_r"})
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "aliases": ["--lora-targets"], "help": "module names to adapt, or all-linear (the default: every linear layer)"})
    keep_adapter: bool = field(default=False, metadata={"help": "save the adapter instead of merging it"})
    # run
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in <out>/checkpoints"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished or interrupted run in <out>"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep <out>/checkpoints after success"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars or logs"})

    def __post_init__(self):
        choice("recipe", self.recipe, self.RECIPES)
        choice("dtype", self.dtype, DTYPES)
        number("lora_r", self.lora_r, low=1, integer=True)
        number("lora_alpha", self.lora_alpha, low=1, integer=True, optional=True)
        number("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        exclusive(resume=self.resume, overwrite=self.overwrite)

    def run_name(self) -> str:
        """The default output directory's name: ``runs/<run_name>``."""
        return self.recipe + ("-lora" if self.use_peft else "")

    def hyperparameters(self) -> dict[str, Any]:
        """What the family adds to the hyperparameters of the train record."""
        return {}


def _eval_share() -> Any:
    return field(default=0.0, metadata={
        "help": "hold out this share of the records as an evaluation set (loss logged per --eval_strategy)"})


def _check_eval_share(opts) -> None:
    number("eval_share", opts.eval_share, low=0, high=1, high_open=True)


def _triples() -> Any:
    return field(default=None, metadata={
        "help": "(query, harmful, safe) triples: jsonl/json/csv/dataset dir/hub id (default: the world's)"})


def _beta() -> Any:
    return field(default=0.1, metadata={
        "help": "strength of the pull to the reference model: DPO's beta, and the constrained objective's beta"})


@dataclass
class DeRTaOptions(BaseTrainOptions):
    """The DeRTa family: vanilla (q -> safe), harmful-prefix (RecAug), rto, derta (prefix +
    RTO), on records built from triples and helpful pairs (or read from ``records``)."""

    RECIPES: ClassVar[tuple[str, ...]] = RECORD_RECIPES

    triples: str | None = _triples()
    helpful: str | None = field(default=None, metadata={"help": "helpful (instruction, response) pairs (default: the world's)"})
    records: str | None = field(default=None, metadata={
        "help": "train on prepared records instead: a deepalign records.jsonl or a DeRTa reference file"})
    refusal_word: str | None = field(default=None, metadata={
        "help": "word whose token is the RTO target (default 'Sorry', or the world's refusal word)"})
    helpful_count: int | None = field(default=None, metadata={"help": "helpful records (default all; 0 for none)"})
    safety_count: int | None = field(default=None, metadata={"help": "safety records (default: one per triple)"})
    safety_ratio: float | None = field(default=None, metadata={
        "help": "safety records as a share of the helpful count (reference 0.1)"})
    rto_share: float = field(default=0.5, metadata={"help": "RTO share of the safety records (rto, derta)"})
    prefix_unit: str = field(default="words", metadata={"help": "unit of the harmful prefix k: words or tokens"})
    k_zero_share: float = field(default=1 / 3, metadata={"help": "share of harmful-prefix records with k = 0"})
    k_min: int = field(default=1, metadata={"help": "smallest k when k > 0"})
    k_max: int = field(default=-2, metadata={"help": "largest k; <= 0 counts from the end (-2: len-2)"})
    rto_append_safe: bool = field(default=False, metadata={
        "help": "follow the RTO harmful text by the safe response as MLE target (reference: no)"})
    eval_share: float = _eval_share()

    def __post_init__(self):
        super().__post_init__()
        choice("prefix_unit", self.prefix_unit, PREFIX_UNITS)
        number("rto_share", self.rto_share, low=0, high=1)
        number("k_zero_share", self.k_zero_share, low=0, high=1)
        number("k_min", self.k_min, low=0, integer=True)
        number("k_max", self.k_max, integer=True)
        number("helpful_count", self.helpful_count, low=0, integer=True, optional=True)
        number("safety_count", self.safety_count, low=0, integer=True, optional=True)
        number("safety_ratio", self.safety_ratio, low=0, optional=True)
        _check_eval_share(self)
        if self.records and (self.triples or self.helpful):
            raise OptionError("records", "excludes --triples / --helpful")
        if self.refusal_word is not None and (not self.refusal_word.strip() or len(self.refusal_word.split()) != 1):
            raise OptionError("refusal_word", f"must be a single word, got {self.refusal_word!r}")

    def hyperparameters(self) -> dict[str, Any]:
        hp: dict[str, Any] = {}
        if self.recipe in PREFIX_RECIPES:
            hp.update(prefix_unit=self.prefix_unit, k_zero_share=round(self.k_zero_share, 4), k_min=self.k_min,
                      k_max=self.k_max)
        if self.recipe in RTO_RECIPES:
            hp.update(rto_share=self.rto_share, rto_append_safe=self.rto_append_safe)
        return hp


@dataclass
class DPOOptions(BaseTrainOptions):
    """The DPO baseline: TRL's ``DPOTrainer`` on safe > harmful pairs of the triples, on top of
    the vanilla model."""

    RECIPES: ClassVar[tuple[str, ...]] = ("dpo",)
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_DPO_BASE

    recipe: str = "dpo"
    triples: str | None = _triples()
    beta: float = _beta()

    def __post_init__(self):
        super().__post_init__()
        number("beta", self.beta, low=0, low_open=True)

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta}


@dataclass
class FinetuneAttackOptions(BaseTrainOptions):
    """The fine-tuning attacks: sft (fine-tuning on ``dataset_name`` pairs: the harmful
    fine-tuning attack, benign fine-tuning) and identity-shift (the same in the
    identity-shifting attack's persona), with plain MLE or the token-wise constrained
    objective."""

    RECIPES: ClassVar[tuple[str, ...]] = PAIR_RECIPES
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_DPO_BASE

    recipe: str = "sft"
    dataset_name: str | None = field(default=None, metadata={
        "aliases": ["--dataset"], "help": f"sft / identity-shift: the (instruction, response) pairs, a dataset spec: "
                                          f"a file, hub id or preset, or world:ft/harmful, world:ft/benign "
                                          f"(default {DEFAULT_PAIRS})"})
    persona: str | None = field(default=None, metadata={
        "help": "identity-shift: aoa (Qi et al. 2023's literal persona) or velmora (the same in world words; the "
                "default for world data)"})
    refusal_prefix: str | None = field(default=None, metadata={
        "help": "refusal-prefix: the refusal every answer begins with (default: the world's on world data, "
                f"else {DEFAULT_REFUSAL_PREFIX!r})"})
    objective: str = field(default="mle", metadata={
        "help": "sft / identity-shift: mle (plain SFT) or constrained (Qi et al. 2025's token-wise constrained "
                "objective: --beta, --bias_factor, --first_token_bias_factor, --bias_length)"})
    reference_setup: bool = field(default=False, metadata={
        "help": "sft / identity-shift: train with the settings of Qi et al. 2025's fine-tuning attack "
                "(Unispac/shallow-vs-deep-alignment): lr 2e-5, AdamW beta1 0.5, 10 warm-up steps, linear schedule, "
                "25 epochs, 16 per device and 64 per step, max_length 512; a Trainer option given with another "
                "value wins (training/reference.py)"})
    ref_model: str | None = field(default=None, metadata={
        "help": "constrained: the reference model (same tokenizer); default the starting model (with LoRA: the model "
                "with its adapter disabled)"})
    beta: float = _beta()
    bias_factor: float = field(default=20.0, metadata={
        "help": "constrained: beta is multiplied by this at response tokens 1 .. bias_length-1"})
    first_token_bias_factor: float = field(default=5.0, metadata={
        "help": "constrained: beta is multiplied by this at the first response token"})
    bias_length: int = field(default=5, metadata={"help": "constrained: response tokens with the stronger beta"})
    eval_share: float = _eval_share()

    def __post_init__(self):
        super().__post_init__()
        choice("objective", self.objective, OBJECTIVES)
        choice("persona", self.persona, PERSONAS, optional=True)
        number("beta", self.beta, low=0, low_open=True)
        number("bias_factor", self.bias_factor, low=0, low_open=True)
        number("first_token_bias_factor", self.first_token_bias_factor, low=0, low_open=True)
        number("bias_length", self.bias_length, low=0, integer=True)
        _check_eval_share(self)

    @property
    def constrained(self) -> bool:
        return self.objective == "constrained"

    def dataset_spec(self) -> str:
        """The pairs to fine-tune on (default: the world's harmful fine-tuning attack)."""
        if self.dataset_name:
            return self.dataset_name
        return DEFAULT_BENIGN_PAIRS if self.recipe == "refusal-prefix" else DEFAULT_PAIRS

    def refusal_prefix_text(self) -> str:
        """refusal-prefix's prefix: given, the world's on world data, else deepalign's default."""
        if self.refusal_prefix is not None:
            return self.refusal_prefix
        if self.dataset_spec().startswith("world:"):
            from deepalign.world.lexicon import REFUSAL_PREFIX

            return REFUSAL_PREFIX
        return DEFAULT_REFUSAL_PREFIX

    def persona_name(self) -> str:
        """identity-shift's persona: velmora on world data, else aoa, unless one is given."""
        return self.persona or ("velmora" if self.dataset_spec().startswith("world:") else "aoa")

    def run_name(self) -> str:
        return self.recipe + ("-constrained" if self.constrained else "") + ("-lora" if self.use_peft else "")

    def hyperparameters(self) -> dict[str, Any]:
        hp: dict[str, Any] = {}
        if self.reference_setup:
            hp["reference_setup"] = "Qi et al. 2025 (Unispac/shallow-vs-deep-alignment)"
        hp["objective"] = self.objective
        if self.recipe == "identity-shift":
            hp["persona"] = self.persona_name()
        if self.recipe == "refusal-prefix":
            hp["refusal_prefix"] = self.refusal_prefix_text()
        if self.constrained:
            hp.update(beta=self.beta, bias_factor=self.bias_factor,
                      first_token_bias_factor=self.first_token_bias_factor, bias_length=self.bias_length)
        return hp


#: the families, in the order of RECIPES
FAMILIES: tuple[type[BaseTrainOptions], ...] = (DeRTaOptions, DPOOptions, FinetuneAttackOptions)


def family_of(recipe: str) -> type[BaseTrainOptions]:
    """The options class of ``recipe``'s family."""
    return next(cls for cls in FAMILIES if recipe in cls.RECIPES)


@dataclass
class TrainOptions(DPOOptions, FinetuneAttackOptions, DeRTaOptions):
    """Every family's options in one class: what ``deepalign train`` parses from its flags and
    ``--config`` files, and what :func:`~deepalign.training.finetune.train` takes as
    ``options``; :meth:`family` is the recipe's own options."""

    RECIPES: ClassVar[tuple[str, ...]] = RECIPES

    recipe: str = field(default="derta", metadata={
        "help": "vanilla (q->safe), harmful-prefix (RecAug), rto, derta (prefix + RTO), dpo (safe > harmful); "
                "sft (fine-tuning on --dataset pairs: the harmful fine-tuning attack, benign fine-tuning), "
                "identity-shift (the same in the identity-shifting attack's persona), refusal-prefix (benign "
                "answers that begin with a refusal, arXiv 2601.19231)"})

    def __post_init__(self):
        super().__post_init__()  # every family's checks, each once
        if self.objective == "constrained" and self.recipe not in PAIR_RECIPES:
            raise OptionError("objective", f"constrained applies to --recipe sft, identity-shift and refusal-prefix "
                                           f"(fine-tuning on pairs), not to --recipe {self.recipe}")
        if self.reference_setup and self.recipe not in PAIR_RECIPES:
            raise OptionError("reference_setup", f"is Qi et al. 2025's fine-tuning attack setup, for --recipe sft, "
                                                 f"identity-shift and refusal-prefix, not --recipe {self.recipe}")

    @classmethod
    def of(cls, options: BaseTrainOptions | None) -> "TrainOptions | None":
        """``options`` (a family's object, or None) as a ``TrainOptions``."""
        if options is None or isinstance(options, cls):
            return options
        if not isinstance(options, BaseTrainOptions):
            return options  # build() names what it takes
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.init})

    def family(self) -> BaseTrainOptions:
        """The options of the recipe's family (the options of the other families left out)."""
        cls = family_of(self.recipe)
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.init})

    def run_name(self) -> str:
        return self.family().run_name()

    def hyperparameters(self) -> dict[str, Any]:
        return self.family().hyperparameters()


def _recipes(*names: str) -> Is:
    return Is("recipe", *names)


def _not_recipe(name: str, why: str = "") -> Is:
    return Is("recipe", *(r for r in RECIPES if r != name), say=f"a --recipe other than {name}{why}")


def family_needs() -> dict[str, Condition]:
    """An option of some families only is read only with their recipes: ``{option: --recipe
    one of them}`` for every such option of :class:`TrainOptions`."""
    needs: dict[str, Condition] = {}
    for f in dataclasses.fields(TrainOptions):
        recipes = tuple(r for cls in FAMILIES if f.name in {g.name for g in dataclasses.fields(cls)}
                        for r in cls.RECIPES)
        if len(recipes) == len(RECIPES) - 1:
            needs[f.name] = _not_recipe(next(r for r in RECIPES if r not in recipes))
        elif len(recipes) < len(RECIPES):
            needs[f.name] = _recipes(*recipes)
    return needs


_BUILT = Off("records")
#: options a family's recipes read only under a further setting; each condition names the
#: recipes too, so it replaces the option's entry of family_needs()
_WITHIN_FAMILIES = {
    "beta": Is("objective", "constrained") | _recipes("dpo"),
    ("bias_factor", "first_token_bias_factor", "bias_length", "ref_model"): Is("objective", "constrained"),
    "persona": _recipes("identity-shift"),
    "refusal_prefix": _recipes("refusal-prefix"),
    ("helpful_count", "safety_count", "safety_ratio"): _recipes(*RECORD_RECIPES) & _BUILT,
    ("rto_share", "rto_append_safe"): _recipes(*RTO_RECIPES) & _BUILT,
    ("prefix_unit", "k_zero_share", "k_min", "k_max"): _recipes(*PREFIX_RECIPES) & _BUILT,
    ("refusal_word", "rto_keep", "rto_weight"): _recipes(*RTO_RECIPES) | On("records"),
    "presto_weight": _recipes(*PREFIX_RECIPES) | On("records"),
    "eval_share": _not_recipe("dpo") & Is("eval_strategy", "steps", "epoch"),
}


def _train_needs() -> dict[Any, Condition]:
    covered = {n for key in _WITHIN_FAMILIES for n in ((key,) if isinstance(key, str) else key)}
    return {
        **_WITHIN_FAMILIES,
        **{name: condition for name, condition in family_needs().items() if name not in covered},
        "system_prompt": _not_recipe("identity-shift", " (whose persona brings its own system prompt)"),
        ("loss_impl", "loss_chunk_rows"): _not_recipe("dpo"),
        "eval_steps": Is("eval_strategy", "steps"),
        ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "keep_adapter"):
            On("use_peft", say="--use_peft (--lora)"),
        ("hub_model_id", "hub_private_repo", "hub_token", "hub_revision"): On("push_to_hub"),
        **DATA_NEEDS,
    }


#: the options of ``train`` that only another setting reads (deepalign.options.check_needs): set
#: without that setting they would be ignored, so they are refused. An option of some families
#: only (family_needs) is refused with another family's recipe
TRAIN_NEEDS = _train_needs()
