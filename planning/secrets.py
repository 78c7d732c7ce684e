"""Pulumi's secret values as the offline run records them, revealed (as the API server stores them) or
redacted (as plans/ shows them)."""

from __future__ import annotations

from typing import Any

# Pulumi's wire form of a secret (pulumi.runtime.rpc): {SECRET_MARKER_KEY: SECRET_MARKER_VALUE, "value": ...}.
# The key marks every special value (assets, archives, resource references too); this value marks a secret.
SECRET_MARKER_KEY = "4dabf18193072939515e22adb298388d"
SECRET_MARKER_VALUE = "1b47061264138c4ac30d75fd1eb44270"
REDACTED = "[secret]"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_MARKER_KEY) == SECRET_MARKER_VALUE


def _replace_secrets(value: Any, secret: Any = None) -> Any:
    """`value` with every Pulumi secret replaced by its value (secret=None) or by `secret`.

    A secret map keeps its keys (a Secret's `stringData` shows which keys it holds, not their values).
    """
    if is_secret(value):
        if secret is None:
            return _replace_secrets(value.get("value"))
        return {key: secret for key in value["value"]} if isinstance(value.get("value"), dict) else secret
    if isinstance(value, dict):
        return {key: _replace_secrets(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_secrets(item, secret) for item in value]
    return value


def reveal(value: Any) -> Any:
    """The value with Pulumi's secrets replaced by what they hold."""
    return _replace_secrets(value)


def redact(value: Any) -> Any:
    """The value with Pulumi's secrets replaced by REDACTED."""
    return _replace_secrets(value, REDACTED)


def contains_secret(value: Any) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, dict):
        return any(contains_secret(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_secret(item) for item in value)
    return False
