"""Generation behind one interface: plain Hugging Face models and composed (logit-arithmetic)
decoders such as Emulated Disalignment."""
