"""Registries by name, with strict arguments: targets, attacks and judges are all built from
short spec strings the same way.

A spec is ``name``, or ``name`` + ``sep`` + arguments separated by ``sep``: positional values
and ``key=value`` options. Attacks and judges use ``:`` (``prefill:8:skip=24``,
``llm:strongreject``), targets ``,`` after the first ``:`` (``hf:runs/derta,format=chat``)
because paths and URLs hold colons. A value holding the separator is written in double
quotes (``system="Be brief, be kind."``; ``\\"`` and ``\\\\`` escape inside quotes). Every
argument a factory does not consume is an error that names it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from deepalign.errors import DeepAlignError

#: the words a yes/no setting or cell may be written with (any case), as (yes, no) pairs: spec
#: flags (``system=true``), 0/1 columns of data and labels files, environment switches
YES_NO = (("1", "0"), ("1.0", "0.0"), ("true", "false"), ("yes", "no"), ("on", "off"))
TRUE_WORDS = frozenset(yes for yes, _ in YES_NO)
FALSE_WORDS = frozenset(no for _, no in YES_NO)


def truth(value: Any) -> bool | None:
    """``value`` as a yes/no (:data:`TRUE_WORDS`, :data:`FALSE_WORDS`, a bool); None when it
    is neither (blank, absent, another word): the caller says whether that is an error."""
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().lower()
    return True if text in TRUE_WORDS else False if text in FALSE_WORDS else None


def split_args(text: str, sep: str, spec: str, *, keep_quotes: bool = False) -> list[str]:
    """Split ``text`` on ``sep`` outside double quotes; quotes are removed and escapes resolved
    (``keep_quotes``: both stay as written, for parts that are split again later)."""
    parts, buf, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\" and i + 1 < len(text):
            buf.extend(text[i:i + 2] if keep_quotes else text[i + 1])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
            if keep_quotes:
                buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quoted:
        raise DeepAlignError(f"{spec!r}: unbalanced double quote")
    parts.append("".join(buf))
    return parts


def quote_arg(value: str) -> str:
    """``value`` as one spec argument, read back exactly by :func:`split_args`: in double quotes,
    with ``\\`` and ``"`` escaped (``system="Be brief, be kind."``)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class SpecArgs:
    """The arguments of one spec: positional values and ``key=value`` options. Factories take
    what they need with :meth:`option` / :meth:`flag` and end with :meth:`done`."""

    spec: str
    what: str
    positional: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    known: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str, rest: str, sep: str, what: str) -> SpecArgs:
        out = cls(spec, what)
        for part in split_args(rest, sep, spec) if rest else []:
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            if eq and key.strip() and " " not in key.strip():
                key = key.strip()
                if key in out.options:
                    raise DeepAlignError(f"{what} {spec!r}: option {key} given twice")
                out.options[key] = value
            else:
                out.positional.append(part.strip())
        return out

    def option(self, key: str, default: Any = None, type_: Callable = str, *, check: Callable | None = None) -> Any:
        self.known.append(key)
        if key not in self.options:
            return default
        raw = self.options.pop(key)  # a string, or a number given from Python (TargetSpec), used as it is
        try:
            value = type_(raw)
            if type_ is int and isinstance(raw, float) and value != raw:
                raise ValueError(raw)
        except (TypeError, ValueError):
            kind = getattr(type_, "__name__", "value")
            raise DeepAlignError(f"{self.what} {self.spec!r}: option {key}={raw!r} is not a valid {kind}") from None
        if check is not None and not check(value):
            raise DeepAlignError(f"{self.what} {self.spec!r}: option {key}={raw!r} is out of range")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        self.known.append(key)
        if key not in self.options:
            if key in self.positional:  # a bare word: `system` means system=true
                self.positional.remove(key)
                return True
            return default
        raw = str(self.options.pop(key)).strip().lower()
        value = truth(raw)
        if value is not None:
            return value
        raise DeepAlignError(f"{self.what} {self.spec!r}: option {key} must be true or false, got {raw!r}")

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Take every option ``prefix.key=value`` (per-component options of composed targets)."""
        out = {k[len(prefix):]: v for k, v in self.options.items() if k.startswith(prefix)}
        for k in out:
            del self.options[prefix + k]
        return out

    def done(self, max_positional: int = 0) -> None:
        """Fail on anything that was not consumed."""
        if self.options:
            bad = sorted(self.options)[0]
            close = difflib.get_close_matches(bad, self.known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else (f"; known: {', '.join(self.known)}" if self.known else "")
            raise DeepAlignError(f"{self.what} {self.spec!r}: unknown option {bad}{hint}")
        if len(self.positional) > max_positional:
            extra = self.positional[max_positional:]
            raise DeepAlignError(f"{self.what} {self.spec!r}: unexpected argument(s) {', '.join(extra)}")


class Registry:
    """Factories by name: ``factory(args: SpecArgs, context: dict)`` builds one object (or a
    list, for attacks that expand into several)."""

    def __init__(self, what: str, sep: str = ":"):
        self.what, self.sep = what, sep
        self.entries: dict[str, tuple[Callable, str]] = {}

    def register(self, name: str, help_: str):
        def deco(factory):
            self.entries[name] = (factory, help_)
            return factory

        return deco

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def help(self) -> dict[str, str]:
        return {name: help_ for name, (_, help_) in sorted(self.entries.items())}

    def check_name(self, spec: str) -> str:
        name = spec.partition(":")[0].strip()
        if name not in self.entries:
            close = difflib.get_close_matches(name, self.entries, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DeepAlignError(f"unknown {self.what} {name!r}{hint}; choose from {', '.join(self.names())}")
        return name

    def build(self, spec: str, **context) -> Any:
        if not isinstance(spec, str) or not spec.strip():
            raise DeepAlignError(f"empty {self.what} spec")
        spec = spec.strip()
        name = self.check_name(spec)
        rest = spec.partition(":")[2]
        args = SpecArgs.parse(spec, rest, self.sep, self.what)
        factory, _ = self.entries[name]
        return factory(args, context)


def split_list(values: Any) -> list[str]:
    """The one reader of comma lists: a string or a list of strings, each possibly
    comma-separated (``"direct,prefill:8"``, ``["direct", "prefill:8,code"]``, ``["sorry,i"]``),
    as one list, blanks dropped; commas inside double quotes are kept (with the quotes, for the
    spec parser: ``llm:x:system="a, b"``)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [p.strip() for item in items for p in split_args(str(item), ",", str(item), keep_quotes=True) if p.strip()]
