"""``deepalign train``: safety fine-tuning with a DeRTa recipe (or the DPO baseline), and the
fine-tuning attacks. One command for every recipe: its flags are every family's options
(:class:`~deepalign.training.options.TrainOptions`); one of another family than the recipe's is
refused.

    deepalign train --recipe derta                       # the embedded world: runs/base -> runs/derta
    deepalign train --config examples/lora_derta_real.yaml --learning_rate 5e-5
    accelerate launch --num_processes 2 -m deepalign train --recipe derta ...
"""

from deepalign.data.datasets import DataOptions
from deepalign.training.finetune import train
from deepalign.training.options import TrainOptions
from deepalign.training.trainer import DeRTaConfig

OPTIONS = (TrainOptions, DeRTaConfig, DataOptions)


def run(options: TrainOptions, training: DeRTaConfig, data: DataOptions) -> int:
    train(options, training, data)
    return 0
