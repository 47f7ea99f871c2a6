"""deepalign: train deep safety alignment (DeRTa), attack it (Emulated Disalignment and
friends), and measure how deep it goes — on any Hugging Face causal LM or on the embedded
fictional safety world."""

__version__ = "0.1.0"

from deepalign.errors import DeepAlignError  # noqa: E402,F401
