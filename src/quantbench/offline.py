"""quantbench downloads nothing at run time: models are built from specs, checkpoints are local paths.

The Hugging Face libraries reach for the Hub on their own in places (a hub id where a path was meant,
a missing file looked up remotely, a dataset name in a calibration call); in offline mode they fail at
once with a message instead, and a run on a machine without a network cannot hang on one. Set before
transformers, datasets or huggingface_hub are imported (they read these once, at import); a value the
user set stands.

gptqmodel builds Machete (and Swordfish) from CUTLASS source that it downloads from GitHub on first use
(gptqmodel/utils/machete.py, urlopen without a timeout); offline, it says what is missing instead. A user
who wants that download sets GPTQMODEL_OFFLINE=0; GPTQMODEL_CUTLASS_DIR names a checkout.
"""

from __future__ import annotations

import os

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "GPTQMODEL_OFFLINE")


def stay_offline() -> dict[str, str]:
    """Default the Hub libraries and gptqmodel to offline mode; returns the values now in force."""
    for key in OFFLINE_ENV:
        os.environ.setdefault(key, "1")
    return {key: os.environ[key] for key in OFFLINE_ENV}


LOOPBACK = ("127.0.0.1", "localhost")


def child_env() -> dict[str, str]:
    """The environment of a child process the suite starts (vLLM's server, its benchmark client): this one's,
    offline where the user did not say otherwise, and loopback never sent through a proxy set for the package
    registries (aiohttp's trust_env): added to the user's NO_PROXY, never replacing it."""
    env = dict(os.environ)
    for key in (*OFFLINE_ENV, "TRANSFORMERS_OFFLINE"):
        env.setdefault(key, "1")
    for key in ("NO_PROXY", "no_proxy"):
        env[key] = ",".join(filter(None, [env.get(key, ""), *LOOPBACK]))
    return env
