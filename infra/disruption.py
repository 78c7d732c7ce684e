"""How long a disrupted pod has: the Spot notice, the serving pods' grace within it, and the drain bounds
of the NodePools (their `terminationGracePeriod`). Config validation (infra/config.py), the pod specs
(infra/pods.py) and the NodePools (infra/karpenter.py) all take these numbers from here.

A serving pod stops in three steps: the preStop sleep while the load balancer deregisters it (new
requests stop arriving), SIGTERM, then uvicorn waits for every admitted request, each bounded by
serving.requestTimeoutSeconds from its admission (queueing plus generating, serving/generation_queue.py),
and the process exits once the worker thread has stopped.
"""

from __future__ import annotations

import math

# EC2 gives a Spot instance two minutes between its interruption warning and the reclaim
# (EC2 User Guide, "Spot Instance interruption notices").
SPOT_NOTICE_SECONDS = 120
# From the warning to the pod's preStop: EventBridge delivers to the SQS queue, Karpenter's poll picks
# the message up, cordons and drains the node. An assumption, not measured here.
INTERRUPTION_REACTION_SECONDS = 20
# The ALB stops sending to a terminating pod only after it deregisters it.
DEREGISTRATION_SECONDS = 15
# After the last admitted request's deadline: the running generation stops at its next denoising step
# (about 1-2 s on inf2 at 1024x1024), then the worker thread joins and the process exits.
EXIT_SECONDS = 10
# What Kubernetes gives a pod that sets no terminationGracePeriodSeconds (the compile Jobs).
DEFAULT_POD_GRACE_SECONDS = 30


def serving_grace_seconds(request_timeout_seconds: int) -> int:
    """A serving pod's terminationGracePeriodSeconds: deregistration, the admitted requests, the exit."""
    return DEREGISTRATION_SECONDS + request_timeout_seconds + EXIT_SECONDS


# A serving pod on Spot must be gone before the instance is: the notice, less Karpenter's reaction.
MAX_SPOT_SERVING_GRACE_SECONDS = SPOT_NOTICE_SECONDS - INTERRUPTION_REACTION_SECONDS
MAX_SPOT_REQUEST_TIMEOUT_SECONDS = MAX_SPOT_SERVING_GRACE_SECONDS - DEREGISTRATION_SECONDS - EXIT_SECONDS


def duration(seconds: int) -> str:
    """A Karpenter duration in whole minutes, rounded up: '45m'."""
    return f"{math.ceil(seconds / 60)}m"
