"""The ``mlflow`` resource: where a run's trainings, evaluations and tables are tracked
(cprec_core.tracking), and the links between a Dagster run and its MLflow runs.

The profile's ``tracking`` section is the default; the launchpad can point one run at
another server (``tracking_uri``) or switch tracking off (``enabled: false``). A trainer in
a child process or pod learns both, and the Dagster run id, asset key and partition it tags
its MLflow run with, from its environment (``child_env``); a step that trains in process
gets the profile with the resource's settings applied (``profile``).

dagster-mlflow's ``mlflow_tracking`` resource is not used: it opens one MLflow run in the
step's own process, while here each training logs from the process that trains (rank 0 of
``accelerate launch``, or a pod), one run per training that a resume continues.
"""

from __future__ import annotations

import dataclasses
import json
import os

import dagster as dg

from cprec_core import tracking
from cprec_core.config import Profile


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking for a run: ``tracking_uri`` ("" = the profile's ``tracking.uri``, else
    ``MLFLOW_TRACKING_URI``, else the local store) and an off switch."""

    tracking_uri: str = ""
    enabled: bool = True

    def profile(self, profile: Profile) -> Profile:
        """``profile`` with this resource's settings: what an in-process step tracks with."""
        settings = profile.tracking
        if self.tracking_uri:
            settings = dataclasses.replace(settings, uri=self.tracking_uri)
        if not self.enabled:
            settings = dataclasses.replace(settings, enabled=False)
        return dataclasses.replace(profile, tracking=settings)

    def tags(self, context: dg.AssetExecutionContext) -> dict[str, str]:
        """The Dagster run, asset and partition an MLflow run was made by (no run where
        the asset is called directly, as in a unit test)."""
        tags = {"dagster.asset_key": context.asset_key.to_user_string()}
        try:
            tags.update({"dagster.run_id": context.run.run_id,
                         "dagster.job": context.run.job_name})
        except dg.DagsterError:  # the run is not set on a directly invoked asset
            pass
        if context.has_partition_key:
            tags["dagster.partition_key"] = context.partition_key
        return tags

    def child_env(self, context: dg.AssetExecutionContext) -> dict[str, str]:
        """The environment that tells a trainer's process the same (launcher.run's ``env``)."""
        env = {tracking.TAGS_ENV: json.dumps(self.tags(context))}
        if self.tracking_uri:  # ranked above the profile's uri, as here (tracking.target)
            env[tracking.URI_OVERRIDE_ENV] = self.tracking_uri
        if os.environ.get(tracking.URI_ENV):  # a pod does not inherit this process's
            env[tracking.URI_ENV] = os.environ[tracking.URI_ENV]
        if not self.enabled or os.environ.get(tracking.OFF_ENV):
            env[tracking.OFF_ENV] = "off" if not self.enabled else os.environ[tracking.OFF_ENV]
        return env

    def run_metadata(self, profile: Profile, run_id: str | None, prefix: str = "mlflow"
                     ) -> dict[str, dg.MetadataValue]:
        """A link to MLflow run ``run_id`` for an asset's metadata (nothing where the run
        was not tracked)."""
        where = tracking.target(self.profile(profile))
        if where is None or not run_id:
            return {}
        return {f"{prefix}_run": dg.MetadataValue.url(where.run_url(run_id)),
                f"{prefix}_run_id": dg.MetadataValue.text(run_id)}


def register_adapters(mlflow: MlflowTracking, profile: Profile, runs: list[tuple[str, object]],
                      log) -> dict[str, dg.MetadataValue]:
    """Model versions for adapters that passed their blocking check: ``runs`` holds
    (registered model name, TrainedAdapter) pairs. A registry that fails is reported in the
    metadata and the log; the check's verdict stays the adapter's."""
    profile = mlflow.profile(profile)
    where = tracking.target(profile)
    if where is None or not where.register:
        return {}
    made, problems = [], []
    for name, run in runs:
        manifest = run.read_manifest()
        if not manifest.mlflow_run_id:
            problems.append(f"{name}: its training was not tracked")
            continue
        data_version = manifest.data_version or manifest.corpus_fingerprint or ""
        try:
            version = tracking.register_adapter(profile, manifest.mlflow_run_id, name, {
                "data_version": data_version, "seed": manifest.seed,
                "git_revision": manifest.git_revision, "base_model": manifest.base_model,
                "fingerprint": manifest.fingerprint or manifest.plan_fingerprint})
        except Exception as exc:  # noqa: BLE001 - the registry's server or store
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        made.append(f"{version['name']} v{version['version']}")
    for problem in problems:
        log(f"model registry ({where.uri}): {problem}")
    out = {"registered": dg.MetadataValue.text(", ".join(made) or "none")}
    if problems:
        out["registry_problems"] = dg.MetadataValue.text("; ".join(problems))
    return out


def models_used(mlflow: MlflowTracking, profile: Profile, slug: str, models: dict, log
                ) -> dict[str, dg.MetadataValue]:
    """What a recommendations snapshot was made with, as MLflow sees it: the re-ranking
    adapter's registered versions and the MLflow runs of it and of the retrieval model."""
    from cprec_core.recommend.pipeline import model_runs

    runs = model_runs(profile.layout, slug, models)
    out: dict[str, dg.MetadataValue] = {}
    for role, run_id in runs.items():
        out.update(mlflow.run_metadata(profile, run_id, prefix=f"{role}_mlflow"))
    tracked = mlflow.profile(profile)
    if tracking.target(tracked) is None:
        return out
    try:
        versions = tracking.model_versions(tracked, [runs.get("reranker")])
    except Exception as exc:  # noqa: BLE001 - the registry's server or store
        log(f"model registry: {type(exc).__name__}: {str(exc)[:200]}")
        return out
    out["model_versions"] = dg.MetadataValue.text(
        ", ".join(f"{v['name']} v{v['version']}" for v in versions) or "none registered")
    return out
