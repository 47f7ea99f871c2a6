"""``deepalign pretrain``: pretrain the world base model, then probe it on the held-out splits."""

from dataclasses import dataclass, field

from deepalign.training.pretrain import PretrainConfig, PretrainOptions, pretrain


@dataclass
class AfterPretrain:
    no_probe: bool = field(default=False, metadata={"help": "skip the held-out evaluation after training"})


OPTIONS = (PretrainOptions, PretrainConfig, AfterPretrain)


def run(options: PretrainOptions, training: PretrainConfig, after: AfterPretrain) -> int:
    out = pretrain(options, training)
    if not after.no_probe:
        from deepalign.evaluation.probe import probe

        probe(model=str(out), world=options.world, quiet=options.quiet)
    return 0
