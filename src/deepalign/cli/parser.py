"""One configuration path for every stage: option dataclasses parsed by ``HfArgumentParser``,
``--config FILE.yaml`` for every stage, flags override the file.

* Every field of a stage's option dataclasses is a flag under its own name
  (``--learning_rate``, ``--max_new_tokens``; ``--max-new-tokens`` works too), plus the
  aliases a field declares (``--out``, ``--model``, ``--target``, ``--lora``, and the first
  command line's ``--lr``, ``--batch-size``, ...). A flag that was renamed with a change of
  meaning (metadata ``was``) is an error that names the new flag.
* ``--config FILE.yaml`` holds a mapping of the same names to values (``learning_rate:
  2e-5``, ``targets: [hf:runs/vanilla, hf:runs/derta]``); it replaces the defaults, and
  flags given on the command line replace it. An ``env:`` mapping sets environment
  variables (as TRL's configs do).
* A list flag given twice adds up (``--target A --target B``); one given once replaces the
  file's list.
* Every mistake is one line naming its origin (``train.yaml: learning_rate: must be > 0,
  got -1`` / ``--learning_rate must be > 0, got -1``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from typing import Any, Sequence

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from deepalign.errors import DeepAlignError, OptionError
from deepalign.options import mark_given

CONFIG = "--config"


class _Given(argparse.Action):
    """``store`` that records which options the command line gave, and lets a list option
    given twice add up."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", set())
        if self.nargs in ("+", "*") and self.dest in given:
            values = list(getattr(namespace, self.dest) or []) + list(values)
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class _GivenFalse(argparse._StoreFalseAction):
    def __call__(self, parser, namespace, values, option_string=None):
        namespace.__dict__.setdefault("_given", set()).add(self.dest)
        super().__call__(parser, namespace, values, option_string)


#: the words that set an option whose value may be None to None on the command line (YAML null)
NONE_WORDS = ("none", "null", "off")


def _or_none(kind):
    """An argparse type that reads ``none`` / ``null`` / ``off`` as None, anything else as ``kind``."""
    def convert(text: str):
        if text.strip().lower() in NONE_WORDS:
            return None
        try:
            return kind(text)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"invalid {getattr(kind, '__name__', 'value')} value (or none): "
                                             f"{text!r}") from None

    convert.kind = kind
    convert.__name__ = getattr(kind, "__name__", "value")  # argparse's "invalid float value" names it
    return convert


def _nullable_fields(dataclass_types) -> set[str]:
    """The fields typed ``X | None`` (X a number or bool): on the command line ``none`` sets
    them to None, as ``null`` does in a config file (``--induce_refusal_threshold none``)."""
    import typing

    out = set()
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            args = typing.get_args(hints.get(f.name))
            if type(None) in args and any(a in (int, float, bool) for a in args):
                out.add(f.name)
    return out


class StageParser(HfArgumentParser):
    """The parser of one stage (see the module doc)."""

    def __init__(self, stage: str, dataclass_types: Sequence[type], description: str = "",
                 positional: str | None = None):
        self.stage = stage
        self.positional = positional
        self.config_file: str | None = None
        self.from_config: dict[str, str] = {}  # dest -> the key as written in the file
        self.given: set[str] = set()
        self.nullable = _nullable_fields(dataclass_types)
        super().__init__(list(dataclass_types), prog=f"deepalign {stage}", description=description,
                         allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        self.add_argument(CONFIG, metavar="FILE.yaml", default=None,
                          help="read options from a YAML file (the options' own names); flags override it")
        # flags that were renamed with a change of meaning (metadata "was"): an error names the new one
        self.renamed: dict[str, str] = {}
        for dtype in self.dataclass_types:
            for f in dataclasses.fields(dtype):
                was = f.metadata.get("was", {})
                for old in was:
                    note = was[old] if isinstance(was, dict) else ""
                    self.renamed[old] = f"--{f.name}" + (f" ({note})" if note else "")

    # argparse hooks ---------------------------------------------------------------------------
    @staticmethod
    def _parse_dataclass_field(parser, field):
        if field.metadata.get("internal"):  # set by the stage itself, no flag (deepalign.options.option_fields)
            return
        HfArgumentParser._parse_dataclass_field(parser, field)

    def add_argument(self, *args, **kwargs):
        kwargs.pop("was", None)  # our own field metadata (renamed flags), not argparse's
        dest = kwargs.get("dest") or (args[0].lstrip("-") if args and str(args[0]).startswith("--") else None)
        if dest in self.nullable and kwargs.get("type") is not None:  # `--kl_threshold none`: what YAML null says
            kwargs["type"] = _or_none(kwargs["type"])
        kind = getattr(kwargs.get("type"), "kind", kwargs.get("type"))
        if kind is string_to_bool and "nargs" not in kwargs:  # bool | None fields: `--bf16` alone works
            kwargs.update(nargs="?", const=True)
        action = kwargs.get("action")
        if action is None or action == "store":
            kwargs["action"] = _Given
        elif action == "store_false":
            kwargs["action"] = _GivenFalse
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise DeepAlignError(" ".join(message.split()))

    # parsing ----------------------------------------------------------------------------------
    def parse(self, argv: Sequence[str]) -> tuple:
        """The stage's option objects from ``argv`` and its ``--config`` file."""
        argv = list(argv)
        if self.positional and argv and not argv[0].startswith("-"):
            argv = [f"--{self.positional}", argv[0], *argv[1:]]
        config = self._config_path(argv)
        if config is not None:
            self._apply_config(config)
        namespace, extra = self.parse_known_args(argv)
        if extra:
            for token in extra:
                new = self.renamed.get(token.split("=", 1)[0])
                if new is not None:
                    raise DeepAlignError(f"{token.split('=', 1)[0]} is now {new}; see deepalign {self.stage} --help")
            raise DeepAlignError(f"unrecognized argument(s): {' '.join(extra)}")
        self.given = set(namespace.__dict__.pop("_given", set()))
        namespace.__dict__.pop("config", None)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            values = {k: v for k, v in vars(namespace).items() if k in names}
            try:
                outputs.append(dtype(**values))
            except OptionError as exc:
                raise self.locate(exc) from None
            except DeepAlignError:
                raise
            except (ValueError, TypeError) as exc:  # a library dataclass' own checks (TrainingArguments)
                raise self._locate_text(" ".join(str(exc).split())) from None
        # which options were set, for the stage's check of options that only another setting
        # reads (deepalign.options.check_needs): a key of the config file that is YAML null for
        # an option whose default is None sets nothing
        from_file = {dest for dest in self.from_config if not (self._default_is_none(dest) and
                                                               self.get_default(dest) is None)}
        for obj in outputs:
            mark_given(obj, self.given, from_file)
        return tuple(outputs)

    def _default_is_none(self, dest: str) -> bool:
        for dtype in self.dataclass_types:
            for f in dataclasses.fields(dtype):
                if f.name == dest:
                    return f.default is None
        return False

    def _config_path(self, argv: list[str]) -> str | None:
        for i, tok in enumerate(argv):
            if tok == CONFIG:
                if i + 1 >= len(argv):
                    raise DeepAlignError(f"{CONFIG} needs a file")
                return argv[i + 1]
            if tok.startswith(CONFIG + "="):
                return tok.split("=", 1)[1]
        return None

    def _apply_config(self, path: str) -> None:
        import yaml

        from deepalign.utils import read_text

        text = read_text(path, what="config file")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise DeepAlignError(f"{path}{where}: not valid YAML ({problem})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DeepAlignError(f"{path}: a config file holds a mapping of option names to values")
        self.config_file = path
        env = data.pop("env", None)
        if env is not None:
            if not isinstance(env, dict):
                raise DeepAlignError(f"{path}: env: must be a mapping of environment variables to values")
            for k, v in env.items():
                os.environ[str(k)] = str(v)
        defaults = {}
        for key, value in data.items():
            action = self._action_for(str(key))
            if action is None:
                known = sorted(a.dest for a in self._actions if a.dest not in ("help", "config"))
                close = difflib.get_close_matches(str(key).replace("-", "_"), known, n=2)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise DeepAlignError(f"{path}: unknown key {key!r}{hint}")
            defaults[action.dest] = self._convert(action, value, f"{path}: {key}")
            self.from_config[action.dest] = str(key)
            action.required = False
        self.set_defaults(**defaults)

    def _action_for(self, key: str):
        for option in (f"--{key}", f"--{key.replace('-', '_')}", f"--{key.replace('_', '-')}"):
            action = self._option_string_actions.get(option)
            if action is not None and option != CONFIG and not isinstance(action, argparse._StoreFalseAction):
                return action
        return None

    def _convert(self, action, value: Any, where: str) -> Any:
        if value is None:
            return None
        if action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            return [self._scalar(action, v, where) for v in items]
        if isinstance(value, (list, dict)):
            if action.type in (str, None) and isinstance(value, dict):
                import json

                return json.dumps(value)  # a dict-valued Trainer setting (fsdp_config, lr_scheduler_kwargs, ...)
            raise DeepAlignError(f"{where}: expected a single value, got a {type(value).__name__}")
        return self._scalar(action, value, where)

    @staticmethod
    def _scalar(action, value: Any, where: str) -> Any:
        kind = action.type
        if hasattr(kind, "kind"):  # an option that also takes none (see _or_none)
            if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
                return None
            kind = kind.kind
        try:
            if kind is string_to_bool:
                return value if isinstance(value, bool) else string_to_bool(str(value))
            if kind in (int, float):
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError
                out = kind(value)
                if kind is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
            elif kind is None or kind is str:
                if isinstance(value, (dict, list)):
                    raise ValueError
                out = value if isinstance(value, str) else str(value)
            else:
                out = kind(value if isinstance(value, str) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            what = {int: "an integer", float: "a number", string_to_bool: "true or false"}.get(kind, "a valid value")
            raise DeepAlignError(f"{where}: must be {what}, got {value!r}") from None
        if action.choices is not None and out not in action.choices:
            raise DeepAlignError(f"{where}: must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        return out

    # errors with their origin -------------------------------------------------------------------
    def locate(self, exc: OptionError) -> DeepAlignError:
        """``exc`` as one line naming where the bad value came from: the config file's key,
        or the flag."""
        if exc.option in self.from_config and exc.option not in self.given:
            return DeepAlignError(f"{self.config_file}: {self.from_config[exc.option]}: {exc.detail}")
        return DeepAlignError(str(exc))

    def _locate_text(self, message: str) -> DeepAlignError:
        for dest, key in self.from_config.items():
            if dest not in self.given and re.search(rf"\b{re.escape(dest)}\b", message):
                return DeepAlignError(f"{self.config_file}: {key}: {message}")
        return DeepAlignError(message)
