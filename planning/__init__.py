"""The offline tooling: render the Pulumi program without credentials, check what it renders, write it.

`infra/` is the deploy program; this package only reads it (nothing in `infra/` or `__main__.py`
imports `planning`). What is here:

- `offline`: the real program run under Pulumi mocks, one stack file at a time;
- `secrets`: Pulumi's secret wire marker, and values with secrets revealed or redacted;
- `render`: a rendering as the files committed under plans/;
- `checks`: the check families (one module each) and `check()`, which runs them all;
- `cel`, `official_iam`: the CRD CEL evaluator and the official-policy comparison the checks and tests use;
- `capacity`: the capacity table written beside each plan; `config_reference`: docs/config.md's table;
- `quotas` (`python -m planning.quotas --stack S`): the EC2 vCPU quotas the NodePools may need, which
  scripts/deploy checks before `pulumi up`;
- `cli` (`python -m planning`): write and check plans;
- `data/`: the Karpenter CRDs, official controller policies and published release data the checks read.
"""

from pathlib import Path

COMMAND = "python -m planning"
REFRESH_COMMAND = f"{COMMAND} --stack all --out plans"
# Committed copies of upstream documents, each folder naming its source.
DATA = Path(__file__).resolve().parent / "data"
