"""Loading models and tokenizers: the one place that decides whether a name is a local
directory or a Hugging Face hub id, what dtype names mean, and how a causal LM is loaded.

Training (the model to fine-tune), decoding (targets, composed decoders) and judges
(classifiers) all load through here, so ``--model gpt2`` and ``--target hf:gpt2`` mean the
same thing. Hub ids are only ever used when no local path of that name exists; with
``HF_HUB_OFFLINE=1`` they fail at once, with one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepalign.errors import DeepAlignError

#: dtype names accepted everywhere (``auto``: bf16 on a CUDA device that has it, else fp32)
DTYPES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def looks_like_hub_id(spec: str) -> bool:
    """``name`` or ``org/name`` with no path syntax (no ``./``, ``/``, ``~``, backslash)."""
    if not spec or spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1:
        return False
    return all(part and not part.startswith(".") for part in spec.split("/"))


def model_source(spec: str | os.PathLike, *, hint: str = "") -> str:
    """The local directory of ``spec`` if it exists, else ``spec`` as a hub id; a missing
    path that cannot be a hub id is a one-line error (``hint`` says how to make it)."""
    text = os.fspath(spec).strip()
    if not text:
        raise DeepAlignError("empty model name; give a model directory or a hub id")
    local = Path(os.path.expanduser(text))
    if local.exists():
        if not local.is_dir():
            raise DeepAlignError(f"model path is not a directory: {text}")
        return str(local)
    if looks_like_hub_id(text):
        return text
    raise DeepAlignError(f"no model directory at {text}{hint}")


def dtype_name(dtype: str | None) -> str:
    name = _ALIASES.get(dtype or "auto", dtype or "auto")
    if name not in DTYPES:
        raise DeepAlignError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return name


def torch_dtype(dtype: str | Any | None, device: Any = None):
    """A ``torch.dtype`` for a dtype name (``auto``: bf16 on a bf16-capable CUDA device)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype)
    if name == "auto":
        dev = torch.device(device) if device is not None else None
        cuda = torch.cuda.is_available() if dev is None else dev.type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(device: str | None = "auto"):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeepAlignError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeepAlignError(f"device {device!r} requested but CUDA is not available")
    return dev


def first_line(exc: BaseException) -> str:
    """An exception's message on one line: its first line, and the next ones while a line ends
    in ':' (the library's cause follows there: "Couldn't instantiate ... from one of:")."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    out = [lines[0]]
    for line in lines[1:4]:
        if not out[-1].endswith(":"):
            break
        out.append(line)
    return " ".join(out)


def load_tokenizer(spec: str | os.PathLike, *, trust_remote_code: bool = False, chat_template: str | None = None,
                   hint: str = ""):
    """The tokenizer of a model directory or hub id, with a pad token (the eos token when it
    has none). ``chat_template``: a Jinja chat template (text, or a file holding it) that
    replaces the tokenizer's own."""
    from transformers import AutoTokenizer

    source = model_source(spec, hint=hint)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError (missing / unreachable), ValueError (unknown class), ...
        raise DeepAlignError(f"cannot load a tokenizer from {spec}: {first_line(exc)}") from None
    if chat_template is not None:
        set_chat_template(tokenizer, chat_template)
    if getattr(tokenizer, "pad_token_id", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise DeepAlignError(f"the tokenizer of {spec} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_chat_template(tokenizer, template: str) -> None:
    """Give ``tokenizer`` a chat template: Jinja text, or the path of a file holding it
    (``.jinja``, ``.j2``, ``.txt``, or a ``tokenizer_config.json`` with a ``chat_template``)."""
    from deepalign.utils import read_text

    text = template
    path = Path(os.path.expanduser(template))
    if "{" not in template and (path.suffix in (".jinja", ".j2", ".txt", ".json") or path.exists()):
        text = read_text(path, what="chat template file")
        if path.suffix == ".json":
            import json

            try:
                text = json.loads(text)["chat_template"]
            except (ValueError, KeyError, TypeError):
                raise DeepAlignError(f"{path}: no \"chat_template\" string in this JSON file") from None
    if not isinstance(text, str) or "{" not in text:
        raise DeepAlignError(f"not a Jinja chat template: {template[:80]!r}")
    try:
        from jinja2.exceptions import TemplateSyntaxError
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(text)
    except TemplateSyntaxError as exc:
        raise DeepAlignError(f"chat template does not parse (line {exc.lineno}: {exc.message})") from None
    except ImportError:  # pragma: no cover - older transformers: checked on first use instead
        pass
    tokenizer.chat_template = text


def load_causal_lm(spec: str | os.PathLike, *, dtype: str | Any | None = "auto", device: str | None = "auto",
                   device_map: str | dict | None = None, trust_remote_code: bool = False, hint: str = ""):
    """A causal LM from a model directory or hub id, in eval mode on ``device`` (or spread
    with ``device_map``, e.g. ``auto``). Weights load from safetensors when present."""
    from transformers import AutoModelForCausalLM

    source = model_source(spec, hint=hint)
    dev = None if device_map is not None else resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, dev), "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:  # OSError, ValueError (unknown architecture), SafetensorError, ...
        raise DeepAlignError(f"cannot load a causal LM from {spec}: {first_line(exc)}") from None
    if dev is not None:
        model.to(dev)
    return model.eval()


def logits_width(model) -> int:
    """Width of the model's output layer (often padded beyond the tokenizer's size)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


# -- batches of token ids for a causal LM (decoding, depth, directions) -------------------------


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a response: the generation config's EOS id(s) and the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return ids


def pad_id(tokenizer, eos: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(eos) if eos else 0


def left_pad(rows: list[list[int]], pad: int, device):
    """Left-pad token lists into ``(input_ids, attention_mask)`` tensors on ``device``."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)
