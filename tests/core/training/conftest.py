"""Fixtures shared by the SFT tests."""

import dataclasses

import duckdb
import pytest

from cprec_core.config import SASRecConfig, load_config_file
from cprec_core.data.build import main as build_corpus
from cprec_core.data.domain_users import build_domain_users, load_domain_data
from cprec_core.evaluation.candidates import build_candidate_sets
from cprec_core.training.cpt import run as run_cpt
from cprec_core.training.next_item import train_next_item


@pytest.fixture
def sft_profile(tmp_path, fixture_config):
    """Corpus, domain users, SASRec and the WSA CPT adapter of the fixture, tiny model: what
    SFT of the ``crime`` domain starts from."""
    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    base = load_config_file(fixture_config)
    profile = dataclasses.replace(
        base, data_dir=str(tmp_path / "data"),
        sft=dataclasses.replace(base.sft, batch_size=2, micro_batch=1, max_samples=24, negatives=2,
                                checkpoint_every=2, dtype="fp32"))
    with duckdb.connect(str(profile.layout.database)) as con:
        build_domain_users(con, "crime")
        build_candidate_sets(con, "crime", negatives=2)
        data = load_domain_data(con, "crime")
    train_next_item(data, SASRecConfig(max_epochs=3, max_len=10),
                    profile.layout.next_item_model("sasrec", "crime"), log=lambda *_: None)
    run_cpt(profile, "wsa")
    return profile
