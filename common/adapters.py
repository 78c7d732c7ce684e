"""LoRA adapters merged into a model's weights: what names one, and the `--lora` form the compile and the server
take it in. The deploy program turns the stack's `model.loras` into those arguments (infra/pods.py); the runtime
reads them back (model/keys.py) and merges the adapters (model/adapters.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from common.neuron import NEURON_FAMILIES, TRN2

# A Hub commit: branch names move, and the keys must not.
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A Hub repository id.
REPOSITORY = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# Adapters are read as safetensors (diffusers' lora_state_dict); a file is named relative to its repository.
WEIGHT_FILE = re.compile(r"^(?!.*(^|/)\.\.(/|$))[\w./-]+\.safetensors$")
# How far an adapter may be scaled either way: past this a LoRA swamps the weights it adapts.
MAX_ADAPTER_SCALE = 8.0
ADAPTER_FIELDS = ("id", "revision", "file", "scale")
# Where adapters are merged into the weights: on trn2, NxD Inference's Flux application shards the checkpoint
# itself (model/backends/nxdi.py), with no place for an adapter.
MERGING_FAMILIES = tuple(family for family in NEURON_FAMILIES if family != TRN2)
SCALE_RULE = f"a number from -{MAX_ADAPTER_SCALE:g} to {MAX_ADAPTER_SCALE:g} other than 0"


def allowed_scale(scale: object) -> bool:
    return (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
            and 0 < abs(scale) <= MAX_ADAPTER_SCALE)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter merged into the weights: a Hub repository at a commit, its weight file (when the
    repository holds several) and the scale its update is added with (diffusers' fuse_lora lora_scale)."""

    repo: str
    revision: str
    scale: float
    file: str | None = None

    def __post_init__(self):
        if not REPOSITORY.match(self.repo):
            raise ValueError(f"adapter {self.repo!r}: not a HuggingFace repository id 'owner/name'")
        if not COMMIT.match(self.revision):
            raise ValueError(f"adapter {self.repo}: revision {self.revision!r} is not a full 40-character commit "
                             "hash (branch names move and would make the weights key lie)")
        if not allowed_scale(self.scale):
            raise ValueError(f"adapter {self.repo}: scale {self.scale!r} is not {SCALE_RULE}")
        # One key for 1 and 1.0: the stack file's number and --lora's text name the same weights.
        object.__setattr__(self, "scale", float(self.scale))
        if self.file is not None and not WEIGHT_FILE.match(self.file):
            raise ValueError(f"adapter {self.repo}: file {self.file!r} is not a .safetensors file of the repository")

    def key(self) -> dict:
        return {"id": self.repo, "revision": self.revision, "file": self.file, "scale": self.scale}

    @classmethod
    def from_key(cls, key: dict) -> Adapter:
        """The adapter a weights key lists (`key()`'s inverse)."""
        return cls(key["id"], key["revision"], key["scale"], key["file"])


def parse_adapter(text: str) -> Adapter:
    """`id=<repo>,revision=<commit>,scale=<number>[,file=<weights.safetensors>]` (--lora's form)."""
    fields = dict(part.partition("=")[::2] for part in text.split(","))
    unknown, missing = set(fields) - set(ADAPTER_FIELDS), {"id", "revision", "scale"} - set(fields)
    if unknown or missing:
        raise ValueError(f"--lora {text!r}: expected id=<repo>,revision=<commit>,scale=<number>[,file=<name>]"
                         + (f", not {', '.join(sorted(unknown))}" if unknown else "")
                         + (f"; {', '.join(sorted(missing))} missing" if missing else ""))
    try:
        scale = float(fields["scale"])
    except ValueError:
        raise ValueError(f"--lora {text!r}: scale {fields['scale']!r} is not a number") from None
    return Adapter(fields["id"], fields["revision"], scale, fields.get("file") or None)


def adapter_argument(adapter: Adapter) -> str:
    """`--lora`'s value for an adapter (parse_adapter's inverse)."""
    return ",".join(f"{name}={value}" for name, value in adapter.key().items() if value is not None)
