"""Pulumi components that stand up the flux-neuron platform on AWS."""
