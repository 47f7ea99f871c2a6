"""Make a tiny random-init model directory of a real architecture with a real tokenizer, offline,
to try the real-model code paths (docs/real_models.md) without downloading a model.

    python examples/tiny_model.py --out runs/tiny-mistral                    # Mistral + Tekken (mistral-common)
    python examples/tiny_model.py --out runs/tiny-llama --tokenizer sentencepiece

``tekken`` writes ``tekken.json`` beside a ``config.json``: transformers then loads the tokenizer
as ``MistralCommonBackend`` (mistral-common's own chat formatting, as for Mistral's recent hub
models). ``sentencepiece`` writes mistral-common's v3 SentencePiece model as a Hugging Face
tokenizer with a Mistral-style chat template. Needs ``pip install mistral-common protobuf``.
The weights are random: the model says nothing sensible, but every token it reads and writes
is a real tokenizer's. vLLM's CPU attention needs a head dimension of at least 32: for a model
to serve with vLLM, give ``--hidden_size 64 --num_heads 2``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                    "{{ '[INST] ' + m['content'] + '[/INST]' }}{% elif m['role'] == 'assistant' %}"
                    "{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", choices=("tekken", "sentencepiece"), default="tekken")
    p.add_argument("--hidden_size", type=int, default=32)
    p.add_argument("--num_heads", type=int, default=4, help="attention heads (key/value heads: half of them)")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import mistral_common
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    data = Path(mistral_common.__file__).parent / "data"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tokenizer == "tekken":
        shutil.copy(data / "tekken_240911.json", out / "tekken.json")
        vocab, bos, eos, pad = 131072, 1, 2, 11
    else:
        shutil.copy(data / "mistral_instruct_tokenizer_240323.model.v3", out / "tokenizer.model")
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "pad_token": "<unk>", "add_bos_token": True, "legacy": False, "chat_template": MISTRAL_TEMPLATE}))
        tok = AutoTokenizer.from_pretrained(out)  # converted once: later loads read tokenizer.json
        tok.save_pretrained(out)
        vocab, bos, eos, pad = len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(args.seed)
    config = MistralConfig(vocab_size=vocab, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                           num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                           num_key_value_heads=max(1, args.num_heads // 2), head_dim=args.hidden_size // args.num_heads,
                           max_position_embeddings=2048, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model = MistralForCausalLM(config)
    model.save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    print(f"{out}: MistralForCausalLM ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random), "
          f"tokenizer {type(loaded).__name__}")


if __name__ == "__main__":
    main()
