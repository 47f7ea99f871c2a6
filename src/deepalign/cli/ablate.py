"""``deepalign ablate``: a standard Hugging Face model with a refusal direction orthogonalised
out of the weights that write into the residual stream.

    deepalign ablate --model runs/study/models/vanilla --direction runs/direction/vanilla \\
        --out runs/vanilla-ablated
"""

from deepalign.direction.ablate import AblateOptions, ablate_weights

OPTIONS = (AblateOptions,)


def run(options: AblateOptions) -> int:
    ablate_weights(options)
    return 0
