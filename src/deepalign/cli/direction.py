"""``deepalign direction``: find a model's refusal direction (difference of means, selected as
Arditi et al. 2024 do).

    deepalign direction --model runs/study/models/vanilla --world runs/study/world \\
        --harmful world:dev/harmful --harmless world:dev/benign --out runs/direction/vanilla

Writes ``OUT/direction.safetensors`` (the unit direction and every candidate) and
``OUT/direction.json`` (layer, position, scale, every candidate's scores, the model's identity
and the token ids of the prompts), atomically.
"""

from deepalign.data.datasets import DataOptions
from deepalign.direction.select import DirectionOptions, refusal_direction

OPTIONS = (DirectionOptions, DataOptions)


def run(options: DirectionOptions, data: DataOptions) -> int:
    refusal_direction(options, data)
    return 0
