"""The layout owns every artifact path and refuses names that would leave the data folder."""

import pytest

from cprec_core.config import ConfigError, load_profile
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
