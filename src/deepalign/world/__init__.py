"""The embedded safety world "Velmora": a fictional, non-actionable domain with its own
data splits, tokenizer and oracle judge, so the whole study runs offline in minutes."""
