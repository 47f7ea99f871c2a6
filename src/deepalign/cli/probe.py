"""``deepalign probe``: greedy-decode a model on the world's held-out splits, judged by the oracle."""

from deepalign.evaluation.probe import ProbeOptions, probe

OPTIONS = (ProbeOptions,)


def run(options: ProbeOptions) -> int:
    probe(options)
    return 0
