"""A small world and a random-init model in its format, for scripts and benchmarks that need a
real run without training anything (the browser check, the viewer benchmark)."""

from __future__ import annotations

from pathlib import Path


def small_world(out: Path, n: int, n_pretrain: int) -> Path:
    """A world with ``n`` items in every test and dev file (seed 0) at ``out``."""
    from deepalign.world.generator import build_world

    build_world(out=str(out), seed=0, quiet=True, n_pretrain=n_pretrain, n_train_triples=20, n_train_helpful=20,
                n_test_harmful=n, n_test_unseen=n, n_test_benign=n, n_test_helpful=n, n_dev_harmful=n,
                n_dev_unseen=n, n_dev_benign=n)
    return out


def random_model(world: Path, out: Path, *, hidden: int, layers: int, heads: int, max_positions: int,
                 intermediate: int | None = None) -> Path:
    """A random-init Llama (seed 0; MLP ``intermediate`` wide, by default twice the hidden size)
    with the world's tokenizer, saved at ``out`` as a standard Hugging Face directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from deepalign.utils import no_weight_bars

    tok = AutoTokenizer.from_pretrained(Path(world) / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with no_weight_bars():
        LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
