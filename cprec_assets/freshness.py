"""Which assets need a run: the ones Dagster calls missing or stale, from the code versions on
the assets and the data versions their materialisations recorded (the same rule as a sensor's
``RunRequest(stale_assets_only=True)`` and the UI's stale badges). `make demo` asks this before
every run, so a second demo with nothing changed trains nothing, and after a change only what
depends on it runs again. The Dagster internals it reads are confined to this module."""

from __future__ import annotations

from typing import Iterable, Sequence

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.observe import observe
from dagster._time import get_current_datetime

NEEDS_RUN = (StaleStatus.MISSING, StaleStatus.STALE)


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance) -> str | None:
    """Record a new observation of every observable source asset (the input files), so a
    changed file shows as a new data version upstream of ``raw_interactions``. Returns the
    error that stopped it (a bad profile, an unreadable folder), or None."""
    graph = defs.resolve_asset_graph()
    sources = [defs.resolve_assets_def(key) for key in graph.get_all_asset_keys()
               if graph.get(key).is_observable]
    if not sources:
        return None
    result = observe(sources, instance=instance,  # resolved with their resources bound
                     run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                     tags={"source": "make demo"}, raise_on_error=False)
    for event in result.all_events:
        if event.is_failure and getattr(event.event_specific_data, "error", None):
            error = event.event_specific_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause  # the first of ours names the file and field
            return error.message.strip()
    return None if result.success else "observing the input files failed"


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance,
                     keys: Iterable[dg.AssetKey], partition_key: str | None = None
                     ) -> list[dg.AssetKey]:
    """The keys (of ``partition_key`` where the asset is partitioned) that are missing or
    stale now, with everything downstream of them among ``keys``: a run re-materialises an
    asset before its dependents read it, so they cannot be judged before the run."""
    graph = defs.resolve_asset_graph()
    keys = list(keys)
    resolver = _resolver(graph, instance)

    def status(key: dg.AssetKey) -> StaleStatus:
        partitioned = graph.get(key).is_partitioned
        return resolver.get_status(key, partition_key if partitioned else None)

    chosen = {key for key in keys if status(key) in NEEDS_RUN}
    return _with_downstream(graph, keys, chosen)


def stale_causes(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey,
                 partition_key: str | None = None) -> list[str]:
    """Why ``key`` is stale, in Dagster's words (what the UI's badge says)."""
    graph = defs.resolve_asset_graph()
    resolver = _resolver(graph, instance)
    partition_key = partition_key if graph.get(key).is_partitioned else None
    return [f"{c.asset_key.to_user_string()} {c.reason}"
            for c in resolver.get_stale_root_causes(key, partition_key)]


def _resolver(graph, instance: dg.DagsterInstance) -> CachingStaleStatusResolver:
    """A resolver reading the instance as of now (its answers are cached: one per question)."""
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(),
                                                           last_event_id=None),
                          instance=instance, asset_graph=graph)
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)


def _with_downstream(graph, keys: Sequence[dg.AssetKey], chosen: set) -> list[dg.AssetKey]:
    among, frontier = set(keys), list(chosen)
    while frontier:
        for child in graph.get(frontier.pop()).child_keys:
            if child in among and child not in chosen:
                chosen.add(child)
                frontier.append(child)
    return [key for key in keys if key in chosen]
