"""Options of the stages: validators and the one way keyword arguments become option objects.

Every stage keeps its options in dataclasses (``TrainOptions`` + ``DeRTaConfig`` for
``train``, ``EvalOptions`` + ``GenConfig`` for ``run_eval``, ...). The CLI builds them from
flags and ``--config`` files; the Python function of the stage accepts the same objects or the
same names as keyword arguments (:func:`build`). Defaults therefore live in one place: the
dataclass.

Validators raise :class:`~deepalign.errors.OptionError` naming the option, and treat NaN and
infinities as the nonsense they are (``not value > 0`` is true for NaN).

An option that only some setting reads (``--bias_factor`` only with ``--objective
constrained``, ``--lora_r`` only with ``--use_peft``, ``--temperature`` only with
``--do_sample``) is listed in its stage's table of :class:`Needs`; :func:`build` refuses it when
it was given and the setting does not hold, so it is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from deepalign.errors import DeepAlignError, OptionError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, integer: bool = False,
           optional: bool = False) -> None:
    """Check that option ``name`` is a finite number in the given range."""
    if value is None and optional:
        return
    if not _is_number(value) or (integer and not float(value).is_integer()):
        raise OptionError(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise OptionError(name, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value >= high if high_open else value > high):
        raise OptionError(name, f"must be {'<' if high_open else '<='} {high:g}, got {value:g}")


def choice(name: str, value: Any, choices, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def exclusive(**flags: Any) -> None:
    """At most one of the named options may be set."""
    given = [k for k, v in flags.items() if v]
    if len(given) > 1:
        raise OptionError(given[1], f"excludes --{given[0]}")


# -- options that only another setting reads -------------------------------------------------


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enums (strategies, schedulers) as their names


class Condition:
    """What an option needs of the other settings (see :data:`Needs`); ``a | b`` and ``a & b``
    combine two."""

    def holds(self, values: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def settings(self) -> set[str]:
        """The options whose values the condition reads."""
        raise NotImplementedError

    def __or__(self, other: "Condition") -> "Condition":
        return _Combined(self, other, any, " or ")

    def __and__(self, other: "Condition") -> "Condition":
        return _Combined(self, other, all, " and ")

    def worded(self, say: str) -> "Condition":
        """The same condition, named ``say`` in errors."""
        return _Worded(self, say)


class Is(Condition):
    """``setting`` is one of ``values``: ``Is("recipe", "rto", "derta")`` reads "--recipe rto or
    derta"."""

    def __init__(self, setting: str, *values: Any, say: str | None = None):
        self.setting, self.values, self.say = setting, tuple(values), say

    def holds(self, values):
        return _plain(values.get(self.setting)) in self.values

    def settings(self):
        return {self.setting}

    def __str__(self):
        if self.say:
            return self.say
        shown = [str(v) for v in self.values]
        listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
        return f"--{self.setting} {listed}"


class On(Condition):
    """``setting`` is on: true, or given (not None, not empty)."""

    def __init__(self, setting: str, say: str | None = None):
        self.setting, self.say = setting, say

    def holds(self, values):
        value = values.get(self.setting)
        return value is not None and value is not False and value != [] and value != ""

    def settings(self):
        return {self.setting}

    def __str__(self):
        return self.say or f"--{self.setting}"


class Off(On):
    """``setting`` is off: false, or not given."""

    def holds(self, values):
        return not super().holds(values)

    def __str__(self):
        return self.say or f"no --{self.setting}"


class Test(Condition):
    """``test(value of setting)`` is true, worded as ``say`` (for conditions on a list of specs)."""

    def __init__(self, setting: str, test, say: str):
        self.setting, self.test, self.say = setting, test, say

    def holds(self, values):
        return bool(self.test(values.get(self.setting)))

    def settings(self):
        return {self.setting}

    def __str__(self):
        return self.say


class _Combined(Condition):
    def __init__(self, a: Condition, b: Condition, join, word: str):
        self.parts, self.join, self.word = (a, b), join, word

    def holds(self, values):
        return self.join(p.holds(values) for p in self.parts)

    def settings(self):
        return set().union(*(p.settings() for p in self.parts))

    def __str__(self):
        return self.word.join(str(p) for p in self.parts)


class _Worded(Condition):
    def __init__(self, condition: Condition, say: str):
        self.condition, self.say = condition, say

    def holds(self, values):
        return self.condition.holds(values)

    def settings(self):
        return self.condition.settings()

    def __str__(self):
        return self.say


#: a stage's table: option name(s) -> the condition under which the stage reads them
Needs = Mapping[Any, Condition]  # keys: an option name or a tuple of them


def check_needs(needs: Needs, values: Mapping[str, Any], given: Iterable[str], from_file: Iterable[str] = ()) -> None:
    """Refuse an option of ``needs`` that was set while the setting it needs does not hold:
    ``--bias_factor is read only with --objective constrained; here it would be ignored``.

    ``given``: the options set on the command line or as arguments; ``from_file``: those set
    only by a ``--config`` file. A file's option is refused too, unless the command line
    changed a setting its condition reads (``--config derta.yaml --recipe vanilla``: the file's
    ``rto_keep`` was written for its own recipe)."""
    given, from_file = set(given), set(from_file) - set(given)
    for names, condition in needs.items():
        for name in (names,) if isinstance(names, str) else names:
            excused = name in from_file and condition.settings() & given
            if (name in given or name in from_file) and not excused and not condition.holds(values):
                raise OptionError(name, f"is read only with {condition}; here it would be ignored")


_GIVEN = "_deepalign_given"


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of option dataclass ``cls`` that are options: not those the stage sets itself
    (metadata ``internal``, e.g. the Trainer's ``output_dir``, which ``train`` puts under
    ``--out``): the command line has no flag for them, the Python function no keyword."""
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def mark_given(obj: Any, given: Iterable[str], from_file: Iterable[str] = ()) -> None:
    """Record on option object ``obj`` which options were set explicitly (the CLI parser: on
    the command line, and in a ``--config`` file), for :func:`build`'s check of :data:`Needs`."""
    object.__setattr__(obj, _GIVEN, (frozenset(given), frozenset(from_file)))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def given_options(obj: Any, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(given, from_file)``: which of ``names`` were set explicitly on ``obj``: as marked by
    :func:`mark_given`, else those whose value differs from the field's default."""
    mark = getattr(obj, _GIVEN, None)
    if mark is not None:
        return set(mark[0]), set(mark[1])
    fields = {f.name: f for f in dataclasses.fields(obj) if f.init}
    out = set()
    for name in names:
        f = fields.get(name)
        if f is not None and _plain(getattr(obj, name)) != _plain(_field_default(f)):
            out.add(name)
    return out, set()


def keyword_aliases(classes) -> dict[str, str]:
    """``{alias: field name}`` from the flags the fields of ``classes`` declare as aliases
    (``--out`` of ``out_dir`` gives ``out``): the Python functions take the same names as the
    command line, so ``out=`` names the output of every stage."""
    out: dict[str, str] = {}
    for cls in classes:
        for f in option_fields(cls):
            for flag in f.metadata.get("aliases", ()):
                name = flag.lstrip("-").replace("-", "_")
                if name != f.name:
                    out.setdefault(name, f.name)
    return out


def build(kwargs: Mapping[str, Any], /, needs: Needs | None = None, **slots: tuple[type, Any]) -> tuple:
    """Turn keyword arguments into option objects, one per slot.

    ``slots`` maps a slot name to ``(dataclass type, object or None)``. Each keyword argument
    goes to the first slot whose dataclass has a field of that name (an object given for the
    slot is copied with the new values). An unknown name is an error listing the close ones.
    ``needs``: the stage's table of options that only another setting reads
    (:func:`check_needs`); an option counts as set when it is a keyword argument, or set on a
    given object (see :func:`given_options`).
    """
    names = {slot: {f.name for f in option_fields(cls)} for slot, (cls, _) in slots.items()}
    aliases = keyword_aliases(cls for cls, _ in slots.values())
    named: dict[str, Any] = {}
    for key, value in kwargs.items():
        field_name = aliases.get(key, key) if not any(key in n for n in names.values()) else key
        if field_name in named:  # out= and output_dir= both given: one would be dropped without a word
            raise DeepAlignError(f"{key}= and another name of the same option ({field_name}) are both given; give one")
        named[field_name] = value
    kwargs = named
    assigned: dict[str, dict[str, Any]] = {slot: {} for slot in slots}
    for key, value in kwargs.items():
        slot = next((s for s in slots if key in names[s]), None)
        if slot is None:
            import difflib

            known = sorted(set().union(*names.values()))
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DeepAlignError(f"unknown option {key!r}{hint}")
        assigned[slot][key] = value
    out = []
    for slot, (cls, obj) in slots.items():
        if obj is not None and not isinstance(obj, cls):
            raise DeepAlignError(f"{slot}= takes a {cls.__name__}, got {type(obj).__name__}; give the options as "
                                 f"keyword arguments (e.g. out=...)")
        try:
            if obj is None:
                obj = cls(**assigned[slot])
            elif assigned[slot]:
                obj = dataclasses.replace(obj, **assigned[slot])
        except TypeError as exc:  # a required option is missing
            raise DeepAlignError(f"{cls.__name__}: {exc}") from None
        except ValueError as exc:  # validation in __post_init__ of a library's dataclass
            if isinstance(exc, DeepAlignError):
                raise
            raise DeepAlignError(" ".join(str(exc).split())) from None
        out.append(obj)
    if needs:
        _check_built(needs, kwargs, slots, out)
    return tuple(out)


def _check_built(needs: Needs, kwargs: Mapping[str, Any], slots, built: list) -> None:
    names = {n for key in needs for n in ((key,) if isinstance(key, str) else key)}
    defaults = {f.name: _field_default(f) for cls, _ in slots.values() for f in dataclasses.fields(cls) if f.init}
    # a keyword argument of None for an option whose default is None sets nothing
    given, from_file = {k for k, v in kwargs.items() if not (v is None and defaults.get(k) is None)}, set()
    for (_, obj), _built in zip(slots.values(), built):
        if obj is not None:
            g, f = given_options(obj, names)
            given |= g
            from_file |= f
    values: dict[str, Any] = {}
    for obj in built:
        values.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                       if f.init and f.name not in values})
    check_needs(needs, values, given, from_file)
