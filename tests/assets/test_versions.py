"""The code versions carry a fingerprint of the settings each asset reads: a changed setting
makes stale what reads it and nothing else; planning more systems changes none."""

import dagster as dg

from cprec_assets import versions
from cprec_core.config import load_profile


def fingerprints(profile) -> dict[str, str]:
    sections = {"data": ("data",), "cpt": ("model", "cpt"), "sasrec": ("sasrec",),
                "gru4rec": ("gru4rec",), "sft": ("model", "sft"),
                "evaluation": ("evaluation", "model")}
    return {name: versions.settings_fingerprint(profile, s) for name, s in sections.items()}


def test_a_setting_changes_only_the_versions_of_what_reads_it():
    base = fingerprints(load_profile("demo"))
    epochs = fingerprints(load_profile("demo", {"sasrec": {"max_epochs": 7}}))
    assert {k for k in base if base[k] != epochs[k]} == {"sasrec"}
    lr = fingerprints(load_profile("demo", {"sft": {"lr": 1e-3}}))
    assert {k for k in base if base[k] != lr[k]} == {"sft"}
    model = fingerprints(load_profile("demo", {"model": {"name": "gemma3-270m"}}))
    assert {k for k in base if base[k] != model[k]} == {"cpt", "sft", "evaluation"}
    planned = fingerprints(load_profile("demo", {"sft": {"systems": ["llara"], "domains": []}}))
    assert planned == base


def test_every_asset_has_a_code_version_with_the_profiles_settings(monkeypatch):
    from cprec_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    materialisable = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    assert all(graph.get(k).code_version for k in materialisable)
    assert graph.get(dg.AssetKey("sasrec")).code_version.startswith("2-")
    monkeypatch.setattr(versions, "_profile", lambda: None)  # a profile that does not load
    assert versions.code_version("3", "sft") == "3"
