from deepalign.cli import entry

entry()
