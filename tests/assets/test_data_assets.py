"""The data stage end to end through Dagster, on the fixture data set and the tiny model."""

import duckdb
import dagster as dg
import pytest
import yaml

from cprec_assets import checks
from cprec_assets.assets import collab, data, evaluate
from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking

STAGE = [data.raw_interactions, data.interactions, data.domain_sequences, data.mixed_sequences,
         data.cpt_corpus]


def resources(cprec: ProfileResource) -> dict:
    """The resources of a run of these assets (the next-item ones track to MLflow)."""
    return {"cprec": cprec, "mlflow": MlflowTracking()}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_interactions", "interactions", "domain_sequences", "mixed_sequences",
            "cpt_corpus", "domain_users", "sasrec", "cpt_adapter"} <= keys


def test_whole_stage_materialises(tmp_path, fixture_config):
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:
        result = dg.materialize(STAGE + checks.data_checks, resources=resources(cprec),
                                instance=instance)
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 7 and all(e.passed for e in evaluations)

        meta = {m.asset_key.to_user_string(): m.metadata
                for m in result.get_asset_materialization_events()
                for m in [m.event_specific_data.materialization]}
        raw = meta["raw_interactions"]
        # the fixture has 4 bad interaction rows and one item row without a usable genre
        assert raw["rows_rejected"].value == 4 and raw["item_rows_rejected"].value == 1
        assert raw["rows_read"].value == raw["dagster/row_count"].value + 4
        corpus = meta["cpt_corpus"]
        assert corpus["tokens_total"].value == (corpus["tokens_domain"].value
                                                + corpus["tokens_mixed"].value
                                                + corpus["tokens_target"].value) > 0
        assert "| kind | domain |" in corpus["summary"].value

        # the interactions asset filled the domain partitions with the target domains
        keys = instance.get_dynamic_partitions(domain_partitions.name)
        assert sorted(keys) == ["crime", "horror"]
        per_domain = dg.materialize(
            [data.domain_users, collab.sasrec, evaluate.candidate_sets, evaluate.evaluation,
             evaluate.twenty_distinct_candidates_with_the_target_once],
            resources=resources(cprec), instance=instance, partition_key="crime")
        assert per_domain.success
        assert all(e.passed for e in per_domain.get_asset_check_evaluations())
        results = per_domain.asset_materializations_for_node("evaluation")[0].metadata["results"]
        assert "| sasrec | ranking | 1 |" in results.value  # system, family, seeds
        assert "| popularity | ranking | 1 |" in results.value
        assert "| base | generation | 1 |" in results.value  # the base model, zero-shot
        sas = per_domain.asset_materializations_for_node("sasrec")[0].metadata
        assert sas["users"].value == 40 and 0 <= sas["test_hr@10"].value <= 1
        assert (cprec.profile.layout.next_item_model("sasrec", "crime").weights).is_file()

    database = cprec.profile.layout.database
    con = duckdb.connect(str(database), read_only=True)
    rejected = con.execute("SELECT field, reason FROM rejected_rows ORDER BY source_file, line").fetchall()
    assert ("timestamp", "unparseable time 'not-a-time'") in rejected
    assert ("item_id", "item '9999' not in fixture.item") in rejected
    users, tests, activity = con.execute(
        "SELECT count(*), count(test_item), count(DISTINCT activity) FROM domain_users"
        " WHERE domain = 'Crime'").fetchall()[0]
    assert users == tests == 40 and activity == 3
    con.close()


def test_missing_input_fails_with_the_path(tmp_path):
    config = tmp_path / "broken.yaml"
    missing = tmp_path / "nowhere"
    config.write_text(yaml.safe_dump({"profile": "demo", "name": "broken", "data": {
        "sources": [{"kind": "movielens", "path": str(missing)}]}}))
    cprec = ProfileResource(config_file=str(config), data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:
        with pytest.raises(Exception, match=f"{missing}: not found or not a MovieLens atomic"):
            dg.materialize([data.raw_interactions], resources=resources(cprec), instance=instance)


def test_unknown_partition_key_is_refused(tmp_path, fixture_config):
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:
        assert dg.materialize(STAGE, resources=resources(cprec), instance=instance).success
        instance.add_dynamic_partitions(domain_partitions.name, ["drama"])
        with pytest.raises(Exception, match="partition key 'drama' is not a target domain"):
            dg.materialize([data.domain_users], resources=resources(cprec), instance=instance,
                           partition_key="drama")
