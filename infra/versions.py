"""Every external version the platform deploys, pinned in one place."""

# Neuron Deep Learning Container the serving/compile image is built FROM (last trn1/inf2 SDK).
NEURON_DLC_IMAGE = "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04"
NEURON_SDK_VERSION = "2.31.1"
