"""Lineage comes from the registry: the evaluation's upstream is every asset whose weights a
registered system reads, so a re-trained adapter of any system, ablations included, makes
that domain's evaluation stale (in the UI and for the automation conditions)."""

import dagster as dg
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # what the UI computes

from cprec_assets.definitions import defs
from cprec_assets.partitions import domain_partitions
from cprec_core.systems import SYSTEMS, evaluation_inputs

EVALUATION = dg.AssetKey("evaluation")


def test_the_evaluation_reads_every_registered_system():
    parents = {k.to_user_string()
               for k in defs.resolve_asset_graph().get(EVALUATION).parent_keys}
    assert parents == {"candidate_sets", *evaluation_inputs()}
    assert {s.asset for s in SYSTEMS if s.asset} <= parents
    assert {"sft_adapter_ds_only", "sft_adapter_ds_mix_shuffled",
            "sft_adapter_shuffled_control"} <= parents


def stand_in(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """The real asset's keys, dependencies and partitions, with no work: every run records a
    new data version, as a re-trained model does."""
    specs = list(assets_def.specs)

    @dg.multi_asset(specs=specs, name=f"stand_in_{assets_def.key.to_python_identifier()}")
    def _asset(context: dg.AssetExecutionContext):
        for spec in specs:
            yield dg.MaterializeResult(asset_key=spec.key,
                                       data_version=dg.DataVersion(context.run_id))

    return _asset


def test_retraining_an_ablation_adapter_makes_that_evaluation_stale():
    stand_ins = [stand_in(a) for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    graph = defs.resolve_asset_graph()
    parents = graph.get(EVALUATION).parent_keys
    unpartitioned = [k for k in parents if not graph.get(k).is_partitioned]
    partitioned = [k for k in parents if graph.get(k).is_partitioned]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(domain_partitions.name, ["crime", "horror"])

        def materialize(keys, partition=None):
            assert dg.materialize(stand_ins, selection=keys, instance=instance,
                                  partition_key=partition).success

        materialize(unpartitioned)
        for domain in ("crime", "horror"):
            materialize(partitioned, domain)
            materialize([EVALUATION], domain)

        def status(domain: str) -> StaleStatus:
            return get_stale_status_resolver(instance, stand_ins).get_status(EVALUATION, domain)

        assert status("crime") == status("horror") == StaleStatus.FRESH
        materialize([dg.AssetKey("sft_adapter_ds_only")], "crime")  # an ablation, re-trained
        assert status("crime") == StaleStatus.STALE
        assert status("horror") == StaleStatus.FRESH


def test_a_retrained_model_requests_that_domains_recommendations():
    """The product stage follows its models (``RECOMMEND``): once everything is fresh, a
    re-trained SASRec of one domain makes the automation request that domain's
    ``full_ranking`` and ``recommendations``, and nothing of the other domain."""
    stand_ins = [stand_in(a) for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    project = dg.Definitions(assets=stand_ins)
    graph = project.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    keys = [k for k in keys if graph.get(k).is_materializable]  # not the observed input files
    unpartitioned = [k for k in keys if not graph.get(k).is_partitioned]
    partitioned = [k for k in keys if graph.get(k).is_partitioned]
    product = {"full_ranking", "recommendations"}
    selection = dg.AssetSelection.assets(*product)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(domain_partitions.name, ["crime", "horror"])

        def materialize(selected, partition=None):
            assert dg.materialize(stand_ins, selection=selected, instance=instance,
                                  partition_key=partition).success

        materialize(unpartitioned)
        for domain in ("crime", "horror"):
            materialize(partitioned, domain)

        def tick(cursor):
            result = dg.evaluate_automation_conditions(
                defs=project, instance=instance, asset_selection=selection, cursor=cursor)
            return result.cursor, {k.to_user_string(): set(result.get_requested_partitions(k))
                                   for k in selection.resolve(graph)
                                   if result.get_requested_partitions(k)}

        cursor, requested = tick(None)
        assert requested == {}  # everything fresh
        materialize([dg.AssetKey("sasrec")], "crime")
        cursor, requested = tick(cursor)
        assert requested == {name: {"crime"} for name in product}
