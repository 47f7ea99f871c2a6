"""Options of the stages: validators and the one way keyword arguments become option objects.

Every stage keeps its options in dataclasses (``TrainOptions`` + ``DeRTaConfig`` for
``train``, ``EvalOptions`` + ``GenConfig`` for ``run_eval``, ...). The CLI builds them from
flags and ``--config`` files; the Python function of the stage accepts the same objects or the
same names as keyword arguments (:func:`build`). Defaults therefore live in one place: the
dataclass.

Validators raise :class:`~deepalign.errors.OptionError` naming the option, and treat NaN and
infinities as the nonsense they are (``not value > 0`` is true for NaN).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

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


def word_list(values) -> list[str]:
    """Words given as a string or a list of strings, each possibly comma-separated
    (``"sorry,i"``, ``["sorry", "i"]``, ``["sorry,i"]``) as one list, blanks dropped."""
    items = [values] if isinstance(values, str) else list(values or [])
    return [w.strip() for item in items for w in str(item).split(",") if w.strip()]


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


def build(kwargs: Mapping[str, Any], /, **slots: tuple[type, Any]) -> tuple:
    """Turn keyword arguments into option objects, one per slot.

    ``slots`` maps a slot name to ``(dataclass type, object or None)``. Each keyword argument
    goes to the first slot whose dataclass has a field of that name (an object given for the
    slot is copied with the new values). An unknown name is an error listing the close ones.
    """
    names = {slot: {f.name for f in dataclasses.fields(cls) if f.init} for slot, (cls, _) in slots.items()}
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
    return tuple(out)
