"""What the compile CLI and the pods that run it agree on: exit statuses, the verified-read setting,
and the parts of the artifact key the deploy program names compile Jobs by."""

# Bump whenever a change in model/ changes what gets traced or how graphs are stored. It is part of the
# graphs' key (model.keys.graphs_key), so old artifacts are never reused, and of the compile Jobs' names
# (infra.pods.artifact_key), so a bump runs them again. 3: ModelBuilder graphs without their weights.
COMPILE_CODE_VERSION = 3
# The same for the weights artifact (model.keys.weights_key), how a checkpoint is cut into per-rank files, and
# the weights Job's name (infra.pods.weights_key).
WEIGHTS_FORMAT_VERSION = 1
# The libraries whose code is traced into every graph, whatever the backend: their installed
# versions are part of the artifact key (the pins of serving/requirements.txt, or the DLC's).
MODEL_LIBRARIES = ("diffusers", "transformers")

# The exit status of `model.compile --resolve` when the key has no published artifact yet; the
# serving pods' wait loop (infra/pods.py) retries on exactly this status.
EXIT_NOT_PUBLISHED = 3
# The exit status of `model.compile` on bad options: a compile Job fails at once on it, since a retry
# fails the same way.
EXIT_USAGE = 2

# How many files model.artifacts.copy_verified reads at once; unset, readers_for_cpus(the cores this
# process may use). Serving pods set it from their CPU share.
READERS_ENV = "FLUX_ARTIFACT_READERS"
# Each Mountpoint reader already fetches its file with many concurrent ranged GETs, so beyond this
# more readers only add threads; it is also as many large files as a FLUX artifact has at TP 8 (16 shards).
MAX_READERS = 16


def readers_for_cpus(cpus: int) -> int:
    """Concurrent file reads for a process with ``cpus`` cores: two per core, at most MAX_READERS.

    A reader alternates between waiting for storage and hashing and writing what arrived, so two
    per core keep every core busy while reads wait.
    """
    return max(1, min(MAX_READERS, 2 * cpus))
