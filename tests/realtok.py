"""Real tokenizers for the conformance tests, built offline from files that installed wheels
ship (mistral-common's SentencePiece v1 / v3 and Tekken files) plus chat templates in each
family's format, written here: Llama-2, Mistral, Llama-3, ChatML (Qwen), Gemma; the world
tokenizer; and a tokenizer without a template (the default text format).

Each family also gives the *independent* reference of how a conversation is tokenised:
transformers' own ``apply_chat_template`` for Jinja templates, mistral-common's own encoder for
``MistralCommonBackend``, and plain concatenation for the text format; none of them goes
through deepalign's encoder.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LLAMA2 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
          "{{ '[INST] <<SYS>>\\n' + m['content'] + '\\n<</SYS>>\\n\\n' }}"
          "{% elif m['role'] == 'user' %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}"
          "{{ '[INST] ' }}{% endif %}{{ m['content'] + ' [/INST]' }}"
          "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + '[/INST]' }}"
           "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
          "m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "{{ '<start_of_turn>' + role + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def mistral_data() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


def _sentencepiece(name: str, template: str | None, extra_special: tuple[str, ...] = (), eos: str = "</s>"):
    """A mistral-common SentencePiece file as a Hugging Face (Llama-class) tokenizer."""
    import json

    from transformers import AutoTokenizer

    d = Path(tempfile.mkdtemp(prefix="sp-"))
    shutil.copy(mistral_data() / name, d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    tok = AutoTokenizer.from_pretrained(d)
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    if eos != "</s>":
        tok.eos_token = eos
    tok.chat_template = template
    tok.pad_token = tok.unk_token
    return tok


def _tekken_fast(template: str, bos: str | None, eos: str, extra_special: tuple[str, ...]):
    """mistral-common's Tekken (byte-level BPE, 131K) as a fast tokenizer with other special tokens."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tok = convert_tekken_tokenizer(str(mistral_data() / "tekken_240911.json"))
    tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tok.bos_token = bos
    tok.eos_token = eos
    tok.pad_token = "<pad>"
    tok.chat_template = template
    return tok


def _tekken_backend():
    """A model directory with ``tekken.json``: transformers loads it as MistralCommonBackend."""
    from transformers import AutoTokenizer, MistralConfig

    d = Path(tempfile.mkdtemp(prefix="tekken-"))
    shutil.copy(mistral_data() / "tekken_240911.json", d / "tekken.json")
    MistralConfig(vocab_size=131072, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1).save_pretrained(d)
    return AutoTokenizer.from_pretrained(d), d


@dataclass
class Family:
    name: str
    tokenizer: object
    arch: str  # the model architecture its tiny model uses
    kind: str  # "jinja", "mistral-common" or "text"
    reference: Callable | None = None  # mistral-common's encoder, for kind == "mistral-common"

    # the independent reference -------------------------------------------------------------
    def prompt(self, query: str) -> list[int]:
        tok = self.tokenizer
        if self.kind == "text":
            return [tok.bos_token_id] + tok(f"Query: {query}\nResponse:", add_special_tokens=False)["input_ids"]
        if self.kind == "mistral-common":
            return self.reference(query, None, False)
        text = tok.apply_chat_template([{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def conversation(self, query: str, response: str, end: bool = True) -> list[int]:
        """Prompt + response ids (with the end of turn when ``end``, else as a forced start)."""
        tok = self.tokenizer
        if self.kind == "text":
            ids = [tok.bos_token_id] + tok(f"Query: {query}\nResponse: {response}", add_special_tokens=False)["input_ids"]
            return ids + ([tok.eos_token_id] if end else [])
        if self.kind == "mistral-common":
            return self.reference(query, response, end)
        conv = [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
        text = tok.apply_chat_template(conv, tokenize=False, continue_final_message=not end)
        return tok(text, add_special_tokens=False)["input_ids"]

    def response(self, query: str, response: str, end: bool = True) -> list[int]:
        prompt, full = self.prompt(query), self.conversation(query, response, end)
        assert full[: len(prompt)] == prompt, f"{self.name}: the template changes the prompt when an answer follows"
        return full[len(prompt):]


def _mistral_common_reference(path: Path):
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import InstructRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    mt = MistralTokenizer.from_file(str(path))

    def encode(query, response, end):
        messages = [UserMessage(content=query)]
        if response is not None:
            messages.append(AssistantMessage(content=response, prefix=not end))
        return list(mt.instruct_tokenizer.encode_instruct(InstructRequest(messages=messages)).tokens)

    return encode


@functools.lru_cache(maxsize=None)
def family(name: str) -> Family:
    if name == "llama2-sp":
        return Family(name, _sentencepiece("tokenizer.model.v1", LLAMA2), "llama", "jinja")
    if name == "mistral-sp":
        return Family(name, _sentencepiece("mistral_instruct_tokenizer_240323.model.v3", MISTRAL), "mistral", "jinja")
    if name == "gemma-sp":
        tok = _sentencepiece("mistral_instruct_tokenizer_240323.model.v3", GEMMA, ("<start_of_turn>", "<end_of_turn>"),
                             eos="<end_of_turn>")
        return Family(name, tok, "gemma", "jinja")
    if name == "llama3-bpe":
        tok = _tekken_fast(LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
                           ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
        return Family(name, tok, "llama", "jinja")
    if name == "chatml-bpe":
        return Family(name, _tekken_fast(CHATML, None, "<|im_end|>", ("<|im_start|>", "<|im_end|>")), "qwen2", "jinja")
    if name == "mistral-tekken":
        tok, _ = _tekken_backend()
        return Family(name, tok, "mistral", "mistral-common", _mistral_common_reference(mistral_data() / "tekken_240911.json"))
    if name == "world":
        from deepalign.world.tokenizer import build_tokenizer

        tok = build_tokenizer(["how do i open the blue box ? step one : take the silver key . step two : turn it twice . "
                               "sorry , i cannot help with that . what is two plus two ? two plus two is four ."])
        return Family(name, tok, "gpt2", "jinja")
    if name == "plain-sp":
        return Family(name, _sentencepiece("tokenizer.model.v1", None), "gpt2", "text")
    raise KeyError(name)


FAMILIES = ("llama2-sp", "mistral-sp", "gemma-sp", "llama3-bpe", "chatml-bpe", "mistral-tekken", "world", "plain-sp")


def tiny_model(arch: str, vocab: int, seed: int = 0, positions: int = 512):
    """A random-init causal LM of a real architecture, small enough for a CPU test."""
    import torch
    from transformers import (GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=positions)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=positions)).eval()
    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
           "qwen2": (Qwen2Config, Qwen2ForCausalLM), "gemma": (GemmaConfig, GemmaForCausalLM)}[arch]
    extra = {"head_dim": 8} if arch == "gemma" else {}
    return cls[1](cls[0](**common, **extra)).eval()
