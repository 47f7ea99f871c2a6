"""Records, loaders and validators, and the DeRTa training recipes."""
