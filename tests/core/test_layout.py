"""The layout owns every artifact path and refuses names that would leave the data folder."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cprec_core.config import ConfigError, load_profile
from cprec_core.data.corpus import export_snapshot
from cprec_core.data.db import connect
from cprec_core.layout import Layout, LayoutError


def test_every_artifact_is_under_the_profile_folder(tmp_path):
    layout = Layout(tmp_path, "demo")
    paths = [layout.database, layout.corpus_parquet, layout.tokenizer_dir,
             layout.leaderboard_chart, layout.cpt_adapter("wsa").adapter_weights,
             layout.sft_run("cprec", "sci-fi", 2).projector,
             layout.next_item_model("gru4rec", "crime").item_index]
    assert all(p.is_relative_to(tmp_path / "demo") for p in paths)
    assert layout.sft_run("cprec", "sci-fi", 2).path == tmp_path / "demo/sft/cprec/sci-fi/seed-2"
    assert layout.cache_dir == tmp_path / "cache"  # shared between profiles


@pytest.mark.parametrize("bad", ["../etc", "/abs", "Crime", "a b", "x'y", "a;b", "", "a\0b"])
def test_names_and_partition_keys_are_checked(tmp_path, bad):
    layout = Layout(tmp_path, "demo")
    with pytest.raises(LayoutError):
        layout.sft_run("cprec", bad, 0)
    with pytest.raises(LayoutError):
        layout.next_item_model(bad, "crime")
    with pytest.raises(LayoutError):
        layout.cpt_adapter(bad)
    with pytest.raises(ConfigError, match="name: "):
        load_profile("demo", {"name": bad})


def test_finished_runs_are_found_by_their_manifests(tmp_path):
    layout = Layout(tmp_path, "demo")
    for run in (layout.cpt_adapter("wsa"), layout.sft_run("llara", "crime", 0)):
        run.path.mkdir(parents=True)
        run.manifest.write_text("{}")
    layout.sft_run("cprec", "crime", 0).path.mkdir(parents=True)  # started, not finished
    assert layout.trained_cpt_adapters() == [layout.cpt_adapter("wsa")]
    assert layout.trained_sft_runs() == [layout.sft_run("llara", "crime", 0)]


def test_lever_runs_lie_beside_the_study_never_in_it(tmp_path):
    layout = Layout(tmp_path, "demo")
    lever = layout.lever_run("listing", "cprec_rank", "crime", 0)
    assert lever.path == tmp_path / "demo/levers/listing/cprec_rank/crime/seed-0"
    assert layout.trained_sft_runs() == [] and not lever.path.is_relative_to(tmp_path / "demo/sft")
    for bad in ("../sft", "a b"):
        with pytest.raises(LayoutError):
            layout.lever_run(bad, "cprec_rank", "crime", 0)
    with pytest.raises(LayoutError):
        layout.lever_run("listing", "cprec_rank", "../etc", 0)


@pytest.mark.parametrize("folder", ["a\0b", "line\nbreak", "tab\there", "", "   "])
def test_a_data_folder_with_nul_or_control_characters_is_refused(folder):
    with pytest.raises(ConfigError, match="data_dir"):
        load_profile("demo", {"data_dir": folder})


class _Tokenizer:
    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "tokenizer_config.json").write_text("{}")


@pytest.mark.parametrize("folder", ["da'ta", "x'; COPY (SELECT 42) TO 'pwned.csv'; --",
                                    "..", "/abs"])
def test_quotes_semicolons_and_dots_in_the_data_folder_never_reach_sql(tmp_path, monkeypatch,
                                                                        folder):
    """A folder is the user's choice (``..`` and absolute paths included); DuckDB only ever
    gets it through its Python API, so no character of it can run SQL."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    data_dir = str(tmp_path / "root" / folder.lstrip("/")) if folder == "/abs" else folder
    profile = load_profile("demo", {"data_dir": data_dir})
    assert profile.layout.database == Path(data_dir) / "demo" / "cprec.duckdb"
    with connect(profile.layout.database) as con:
        con.execute("CREATE TABLE cpt_corpus AS SELECT 0 AS doc_id, 'domain' AS kind,"
                    " ['A'] AS domains, [1] AS item_idxs, [5, 6] AS input_ids, 2 AS n_tokens")
        con.execute("CREATE TABLE items AS SELECT 1 AS item_idx, 'A' AS domain, 'Film' AS title")
        con.execute("CREATE TABLE cpt_corpus_info AS SELECT 'x' AS tokenizer")
        export_snapshot(con, profile.layout, _Tokenizer())
    assert pq.read_table(profile.layout.corpus_parquet).num_rows == 1
    assert pq.read_table(profile.layout.corpus_items).column("title").to_pylist() == ["Film"]
    assert not list(tmp_path.rglob("pwned.csv"))


@pytest.mark.parametrize("overrides", [
    {"data": {"sources": [{"kind": "table", "path": "logs\0.csv"}]}},
    {"data": {"sources": [{"kind": "table", "path": "logs\n.csv"}]}},
    {"model": {"name": "models/\0evil"}},
])
def test_source_paths_and_model_folders_with_nul_are_refused(overrides):
    with pytest.raises(ConfigError, match="NUL or control"):
        load_profile("demo", overrides)


def test_run_manifest_round_trips_and_reads_older_files(tmp_path):
    from cprec_core.layout import RunManifest, TrainedAdapter

    run = TrainedAdapter(tmp_path / "run")
    run.path.mkdir()
    written = RunManifest(kind="sft", system="cprec_rank", partition="crime", seed=1,
                          base_model="tiny", steps=3, objective="rank",
                          validation={"step": 3, "scoring": "sum"}, extra={"note": "kept"})
    run.write_manifest(written)
    assert run.read_manifest() == written
    assert not list(run.path.glob("*.tmp"))  # written beside, renamed over
    raw = json.loads(run.manifest.read_text())
    assert raw["note"] == "kept" and "extra" not in raw and "sft_system" not in raw

    # a file from before the record: no kind, no objective, a key this version lacks
    old = RunManifest.from_json(json.dumps({"system": "llara", "base_model": "tiny",
                                            "steps": 2, "final_loss": 1.5, "retired": 7}))
    assert (old.kind, old.objective, old.final_loss, old.extra) == ("sft", "ntp", 1.5,
                                                                    {"retired": 7})
    assert RunManifest.from_json(json.dumps({"variant": "wsa"})).kind == "cpt"
    assert RunManifest.from_json(json.dumps({"objective": "dpo"})).kind == "dpo"
    assert json.loads(old.to_json())["retired"] == 7  # written back unchanged
