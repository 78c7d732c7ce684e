"""The Neuron instance families the platform runs on.

Each is also a neuronx-cc `--target`, so the node pools infra/ offers and the targets model/
compiles for are the same set (infra/catalog.py describes each family's instances).
"""

NEURON_FAMILIES = ("trn1", "trn1n", "trn2", "inf2")
