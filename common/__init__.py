"""Facts shared by the deploy program (infra/), the compile (model/) and the server (serving/).

Standard library only, and importing nothing from the rest of the repository: the serving image
carries this package with model/ and serving/, and the Pulumi program reads it without torch.
A fact two of those packages need is defined here once (tests/test_layout.py enforces the rule).
"""
