"""Loading models: what a user is told when it fails."""

from __future__ import annotations


def test_a_library_error_keeps_the_cause_it_announces():
    """One line, and not one that stops at "from one of:" with its cause on the next line."""
    from deepalign.models import first_line

    err = OSError("Couldn't instantiate the backend tokenizer from one of:\n(1) a tokenizers library file,\n"
                  "(2) a slow tokenizer instance.\nmore detail")
    assert first_line(err) == "Couldn't instantiate the backend tokenizer from one of: (1) a tokenizers library file,"
    assert first_line(ValueError("bad value\nsecond line")) == "bad value" and first_line(KeyError()) == "KeyError"
