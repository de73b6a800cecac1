"""`python -m cprec_assets.demo --stage ...`: names are checked before anything runs."""

import dagster as dg
import pytest

from cprec_assets import demo
from cprec_assets.partitions import domain_partitions


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("CPREC_PROFILE", "demo")
    return dg.DagsterInstance.get()


def test_domain_stages_need_partitions_and_known_names(instance):
    with pytest.raises(SystemExit, match="run --stage corpus first"):
        demo.main(["--stage", "evaluation"])
    instance.add_dynamic_partitions(domain_partitions.name, ["crime"])
    with pytest.raises(SystemExit, match=r"--domain \['horror'\]: not one of \['crime'\]"):
        demo.main(["--stage", "sft", "--domain", "horror"])
    with pytest.raises(SystemExit, match=r"--system \['gru4rec'\]"):
        demo.main(["--stage", "sft", "--domain", "crime", "--system", "gru4rec"])
    with pytest.raises(SystemExit,
                       match=r"--system \[.gru4rec.\]: not one of \[.base., .*.cprec_dpo.\]"):
        demo.main(["--stage", "evaluation", "--system", "gru4rec"])  # not an LLM system
    with pytest.raises(SystemExit, match=r"--variant \['wsd'\]"):
        demo.main(["--stage", "cpt", "--variant", "wsd"])
