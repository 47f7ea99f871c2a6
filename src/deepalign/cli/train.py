"""``deepalign train``: safety fine-tuning with a DeRTa recipe (or the DPO baseline).

    deepalign train --recipe derta                       # the embedded world: runs/base -> runs/derta
    deepalign train --config examples/lora_derta_real.yaml --learning_rate 5e-5
    accelerate launch --num_processes 2 -m deepalign train --recipe derta ...
"""

from deepalign.training.finetune import TrainOptions, train
from deepalign.training.trainer import DeRTaConfig

OPTIONS = (TrainOptions, DeRTaConfig)


def run(options: TrainOptions, training: DeRTaConfig) -> int:
    train(options, training)
    return 0
