"""The one secret codec (planning.secrets), on secrets as the real program hands them to the engine."""

import pytest

from infra.naming import HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY
from planning.offline import PLACEHOLDER_HF_TOKEN
from planning.secrets import REDACTED, SECRET_MARKER_KEY, contains_secret, is_secret, redact, reveal

DEV = pytest.mark.parametrize("stack", ["dev"], indirect=True)


def _token_secret(rendering):
    """The HF token Secret's stringData: a secret map, as the program declares it."""
    return rendering.one("kubernetes:core/v1:Secret", HF_TOKEN_SECRET).inputs["stringData"]


@DEV
def test_a_secret_map_is_revealed_whole_and_redacted_keeping_its_keys(rendering):
    secret = _token_secret(rendering)
    assert is_secret(secret)
    assert reveal(secret) == {HF_TOKEN_SECRET_KEY: str(PLACEHOLDER_HF_TOKEN)}
    assert redact(secret) == {HF_TOKEN_SECRET_KEY: REDACTED}


@DEV
def test_secrets_are_found_and_replaced_at_any_depth(rendering):
    secret = _token_secret(rendering)
    nested = {"env": [{"name": "A", "value": "plain"}, {"name": "B", "value": secret}]}
    assert contains_secret(nested) and not contains_secret(reveal(nested))
    assert reveal(nested)["env"][1]["value"] == {HF_TOKEN_SECRET_KEY: str(PLACEHOLDER_HF_TOKEN)}
    assert redact(nested) == {"env": [{"name": "A", "value": "plain"},
                                      {"name": "B", "value": {HF_TOKEN_SECRET_KEY: REDACTED}}]}


def test_other_special_values_under_the_same_marker_key_are_not_secrets():
    # Pulumi marks assets, archives and resource references with the same key and another value.
    asset = {SECRET_MARKER_KEY: "c44067f5952c0a294b673a41bacd8c17", "path": "./file.txt"}
    assert not is_secret(asset) and not contains_secret(asset)
    assert reveal(asset) == asset and redact(asset) == asset
