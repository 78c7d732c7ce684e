"""The AWS regions a stack may deploy to and the availability zone names each has: the config refuses any
other (`aws:region: us-west-9`, `network.zones: [us-west-2e]`) before anything is created, and the offline
run answers EC2's zone questions from the same list.

Sources, as of 2026-10: the region codes are the `aws` partition of botocore 1.44.18's
`data/endpoints.json` (the commercial regions; GovCloud and China use other ARN partitions, which the
program's policies do not name); the zones are the AZ IDs per region of the AWS documentation, "AWS
Availability Zones" (docs.aws.amazon.com/global-infrastructure/latest/regions/aws-availability-zones.html),
named as EC2 names them, the region code and a letter. In the oldest regions an account sees its own
mapping of letters to zones and not always every letter (us-west-1: two of a, b, c; ap-northeast-1b only in
accounts that had it; ca-central-1 has no c): a listed name can still be absent from one account, which EC2's
answer at `up` then refuses (infra/network.py).
"""

from __future__ import annotations

_THREE = "abc"
ZONE_LETTERS: dict[str, str] = {
    "us-east-1": "abcdef", "us-east-2": _THREE, "us-west-1": _THREE, "us-west-2": "abcd",
    "af-south-1": _THREE, "ap-east-1": _THREE, "ap-east-2": _THREE, "ap-northeast-1": "abcd",
    "ap-northeast-2": "abcd", "ap-northeast-3": _THREE, "ap-south-1": _THREE, "ap-south-2": _THREE,
    "ap-southeast-1": _THREE, "ap-southeast-2": _THREE, "ap-southeast-3": _THREE, "ap-southeast-4": _THREE,
    "ap-southeast-5": _THREE, "ap-southeast-6": _THREE, "ap-southeast-7": _THREE, "ca-central-1": "abd",
    "ca-west-1": _THREE, "eu-central-1": _THREE, "eu-central-2": _THREE, "eu-north-1": _THREE,
    "eu-south-1": _THREE, "eu-south-2": _THREE, "eu-west-1": _THREE, "eu-west-2": _THREE, "eu-west-3": _THREE,
    "il-central-1": _THREE, "me-central-1": _THREE, "me-south-1": _THREE, "mx-central-1": _THREE,
    "sa-east-1": _THREE,
}
REGIONS: tuple[str, ...] = tuple(sorted(ZONE_LETTERS))


def zones(region: str) -> tuple[str, ...]:
    """The availability zone names of a region, in name order (none for a region not listed)."""
    return tuple(f"{region}{letter}" for letter in ZONE_LETTERS.get(region, ""))
