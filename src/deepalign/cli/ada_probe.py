"""``deepalign ada-probe``: fit ADA-LP's linear probe (Any-Depth Alignment, arXiv 2510.18081)
for a model, to defend it with the ``ada-lp:<model>:<probe dir>`` target.

    deepalign ada-probe --model runs/study/models/vanilla --world runs/study/world \\
        --harmful world:dev/harmful --harmless world:dev/benign world:dev/helpful --out runs/ada-probe

Writes ``OUT/probe.safetensors`` and ``OUT/probe.json`` (layer, header, interval, tokenizer,
model and data identity, held-out accuracy per layer), atomically
(:mod:`deepalign.decoding.ada_probe`).
"""

from deepalign.decoding.ada_probe import ProbeOptions, fit_probe

OPTIONS = (ProbeOptions,)


def run(options: ProbeOptions) -> int:
    fit_probe(options)
    return 0
