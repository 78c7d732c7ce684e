"""The one image compile Jobs and serving pods run (serving/Dockerfile; tests/serving/test_dockerfile.py
checks the Dockerfile against these)."""

# The Neuron Deep Learning Container the image is built FROM: the last SDK for trn1/inf2. Source: the
# public.ecr.aws/neuron/pytorch-inference-neuronx tags (Neuron DLC release notes); its SDK is
# NEURON_SDK_VERSION, whose driver requirement is in planning/data/published/neuron-sdk-driver.txt.
NEURON_DLC_IMAGE = "public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04"
NEURON_SDK_VERSION = "2.31.1"

# The image's numeric user: pods run as it, and the graph volumes (Mountpoint's uid/gid options)
# present their files as its.
CONTAINER_UID = 10001
