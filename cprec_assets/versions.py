"""The assets' code versions: the asset's own number (bump it when the asset's output changes
for the same inputs) and a fingerprint of the profile settings it reads, so that a changed
setting makes stale the assets that read it (the UI's badge, `make demo`) and nothing else.

The settings are those of the profile the code location loads (``CPREC_PROFILE`` /
``CPREC_CONFIG``, as the ``cprec`` resource reads them); a launchpad override of the resource
for one run is not seen here. The lists of systems and the LLM domains are left out: adding a
system adds assets and partitions to run, it does not change the ones already there."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from cprec_core.config import ConfigError, Profile, load_config_file, load_profile

LEFT_OUT = ("systems", "domains")  # what is planned, not how an asset computes


@functools.cache
def _profile() -> Profile | None:
    from cprec_assets.resources import get_env

    env = get_env()
    try:
        if env["config_file"]:
            return load_config_file(env["config_file"])
        return load_profile(env["profile_name"])
    except (ConfigError, OSError):  # the resource reports it when a run starts
        return None


def settings_fingerprint(profile: Profile, sections: tuple[str, ...]) -> str:
    """8 hex digits over the named sections of ``profile`` (``sft``, ``model``, ...)."""
    chosen = {}
    for name in sections:
        values = dataclasses.asdict(getattr(profile, name))
        chosen[name] = {k: v for k, v in values.items() if k not in LEFT_OUT}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()
                          ).hexdigest()[:8]


def code_version(number: str, *sections: str) -> str:
    """``number`` alone, or ``number-<settings fingerprint>`` where the asset reads
    ``sections`` of the profile."""
    profile = _profile()
    if not sections or profile is None:
        return number
    return f"{number}-{settings_fingerprint(profile, sections)}"
