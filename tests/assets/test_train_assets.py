"""The CPT asset end to end: Dagster Pipes -> accelerate launch -> cprec_core.cpt (tiny model)."""

import json

import dagster as dg

from cprec_assets import checks
from cprec_assets.assets import data
from cprec_assets.assets.train import accelerate_command, cpt_assets, cpt_checks
from cprec_assets.resources import CPRecConfig

STAGE = [data.raw_interactions, data.interactions, data.domain_sequences, data.mixed_sequences,
         data.cpt_corpus]


def test_cpt_adapter_runs_through_pipes_and_reports(tmp_path, fixture_config):
    cprec = CPRecConfig(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    resources = {"cprec": cprec, "pipes_subprocess_client": dg.PipesSubprocessClient()}
    command = accelerate_command(cprec, "cprec_core.cpt", "--variant", "wsa")
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--cpu" in command
    with dg.instance_for_test() as instance:
        result = dg.materialize([*STAGE, *cpt_assets, *checks.data_checks, *cpt_checks],
                                selection=[a.key for a in STAGE] + [cpt_assets[0].key],
                                resources=resources, instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("cpt_adapter")[0].metadata
    # reported by the child process through Pipes
    assert meta["finished"].value is True and meta["base_model"].value == "tiny-random"
    assert meta["tokens"].value > 0 and meta["tokens_per_second"].value > 0
    # added by the asset from the files the child wrote
    assert meta["curves"].value.startswith("![training curves](data:image/png;base64,")
    assert "| anneal |" in meta["phases"].value
    evaluations = result.get_asset_check_evaluations()
    assert [e.check_name for e in evaluations if e.asset_key == cpt_assets[0].key] == ["adapter_is_finite"]
    assert all(e.passed for e in evaluations)
    out = cprec.load().cpt_dir("wsa")
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"warmup", "stable", "anneal"}
