"""The evaluation asset reads its tables for the domain the evaluation names (the database's
name, "Crime"), not for the partition key ("crime"), without indexing rows by position."""

import dagster as dg

from cprec_assets.assets import evaluate
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking
from cprec_core.evaluation.evaluate import Evaluation, ResultRow, Rows


def test_the_asset_reports_the_domain_the_evaluation_names(tmp_path, fixture_config,
                                                           monkeypatch):
    row = ResultRow("Crime", "test", "popularity", 0, "ranking", "all", 5, 1.0, 0.2, 0.2)
    asked = []
    monkeypatch.setattr(evaluate, "evaluate_domain",
                        lambda *args, **kwargs: Evaluation("Crime", Rows(results=[row] * 3)))
    monkeypatch.setattr(evaluate, "evaluation_tables",
                        lambda con, domain: asked.append(domain) or {"results": "| x |"})
    monkeypatch.setattr(evaluate, "scoring_seconds",
                        lambda con, domain: asked.append(domain) or 12.34)
    monkeypatch.setattr(evaluate, "domain_rows",  # what the MLflow run records (off here)
                        lambda con, domain, resamples: asked.append(domain) or ([], []))
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    result = evaluate.evaluation(context=dg.build_asset_context(partition_key="crime"),
                                 config=evaluate.EvaluationRunConfig(), cprec=cprec,
                                 mlflow=MlflowTracking())
    assert asked == ["Crime", "Crime"]  # tracking off: no rows computed for MLflow
    assert result.metadata["dagster/row_count"] == 3
    assert result.metadata["llm_scoring_seconds"] == 12.3
