import re
import subprocess
import sys
import textwrap

import pytest

from cprec_core.config import PROFILES, ConfigError, Profile, load_config_file, load_profile


def test_named_profiles_load():
    demo = load_profile("demo")
    assert isinstance(demo, Profile) and demo.name == "demo"
    assert demo.data.sources[0].name == "ml-100k"
    assert demo.data.target_domains == ("Crime", "Sci-Fi")
    assert demo.layout.database.name == "cprec.duckdb" and demo.layout.root.name == "demo"
    assert load_profile("full").device == "auto"


def test_every_named_profile_loads_into_its_own_folder():
    """A profile named after another would write into (and overwrite) the other's data."""
    roots = {}
    for name in PROFILES:
        profile = load_profile(name)
        assert profile.name == name and profile.layout.root.name == name
        roots[profile.layout.root] = name
    assert len(roots) == len(PROFILES)
    two_hours, study = load_profile("study-2h"), load_profile("study")
    assert two_hours.cpt.max_tokens < study.cpt.max_tokens
    assert two_hours.sft.max_samples < study.sft.max_samples
    assert two_hours.sft.seeds == study.sft.seeds == (0, 1, 2)
    assert two_hours.evaluation.max_cases == 0
    # the paper-recipe studies train the paper's systems; the candidate-aware study both kinds
    assert not any(name.endswith("_rank") for name in study.sft.systems)
    rank = load_profile("study-rank")
    assert {"llara", "cprec", "llara_rank", "cprec_rank", "cprec_shuffled_control_rank",
            "llara_residual", "cprec_residual"} == set(rank.sft.systems)
    assert rank.sft.seeds_for("cprec_rank") == (0, 1) and rank.evaluation.fusion == "cprec_rank"
    assert "shuffled_control" in rank.cpt.variants


def test_rank_and_fusion_settings_are_checked():
    with pytest.raises(ConfigError, match="sft.rank.ntp_weight"):
        load_profile("demo", {"sft": {"rank": {"ntp_weight": -1}}})
    with pytest.raises(ConfigError, match=r"sft.rank(: |\.)epochs"):
        load_profile("demo", {"sft": {"rank": {"epochs": 0}}})
    with pytest.raises(ConfigError, match="evaluation.fusion 'sasrec' is not an SFT system"):
        load_profile("demo", {"evaluation": {"fusion": "sasrec"}})
    assert load_profile("demo", {"evaluation": {"fusion": ""}}).evaluation.fusion == ""


def test_unknown_keys_and_wrong_types_fail_at_load():
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['user_kore'\]"):
        load_profile("demo", {"data": {"user_kore": 3}})
    with pytest.raises(ConfigError, match="corpus.max_items: expected an integer"):
        load_profile("demo", {"corpus": {"max_items": "20"}})
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("nope")
    with pytest.raises(ConfigError, match="source kind 'csv'"):
        load_profile("demo", {"data": {"sources": [{"kind": "csv", "path": "x"}]}})
    with pytest.raises(ConfigError, match="both source and target"):
        load_profile("demo", {"data": {"source_domains": ["Crime"]}})


def test_yaml_file_overrides_a_profile(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("profile: demo\nname: mine\ndata:\n  user_core: 3\n"
                    "  sources:\n    - {kind: table, path: /logs}\n")
    profile = load_config_file(path)
    assert profile.name == "mine" and profile.data.user_core == 3
    assert profile.data.sources[0].kind == "table"
    assert profile.data.target_domains == ("Crime", "Sci-Fi")  # kept from demo
    (tmp_path / "bad.yaml").write_text("data: {nope: 1}\n")
    with pytest.raises(ConfigError, match="bad.yaml: data: unknown key"):
        load_config_file(tmp_path / "bad.yaml")


def test_evaluation_and_seed_settings_out_of_range_fail_at_load():
    with pytest.raises(ConfigError, match="evaluation.batch_size:? must be at least 1"):
        load_profile("demo", {"evaluation": {"batch_size": 0}})
    with pytest.raises(ConfigError,
                       match="evaluation.valid_ratio_floor:? must be (between 0 and 1|at most 1)"):
        load_profile("demo", {"evaluation": {"valid_ratio_floor": 1.5}})
    with pytest.raises(ConfigError, match="sft.seeds must be distinct"):
        load_profile("demo", {"sft": {"seeds": [0, 0]}})


def test_next_item_model_settings_out_of_range_fail_at_load():
    with pytest.raises(ConfigError, match="gru4rec.hidden:? must be at least 1"):
        load_profile("demo", {"gru4rec": {"hidden": 0}})
    with pytest.raises(ConfigError, match=r"sasrec.dropout:? must be (in \[0, 1\)|below 1)"):
        load_profile("demo", {"sasrec": {"dropout": 1.0}})
    with pytest.raises(ConfigError, match="gru4rec.lr:? must be (positive|greater than 0)"):
        load_profile("demo", {"gru4rec": {"lr": 0}})


@pytest.mark.parametrize("key, value, message", [
    ("cpt.micro_batch", 0, "cpt.micro_batch: must be at least 1, got 0"),  # was a crash
    ("sft.lr", -1.0, "sft.lr: must be greater than 0"),
    ("cpt.lora.r", 0, "cpt.lora.r: must be at least 1"),
    ("cpt.warmup_ratio", 1.5, "cpt.warmup_ratio: must be at most 1"),
    ("evaluation.seed", -1, "evaluation.seed: must be at least 0"),
    ("dpo.grad_clip", -1.0, "dpo.grad_clip: must be at least 0"),
])
def test_every_number_is_range_checked_before_its_section_is_built(key, value, message):
    override: dict = {}
    section = override
    *path, name = key.split(".")
    for part in path:
        section = section.setdefault(part, {})
    section[name] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_profile("demo", override)
    with pytest.raises(ConfigError, match=r"sasrec.heads must divide sasrec.hidden \(64\)"):
        load_profile("demo", {"sasrec": {"heads": 3}})


def _alias_bomb() -> str:
    """Nine levels of nine aliases each: under 600 bytes, 9 ** 9 strings once expanded."""
    lines, item = [], '"lol"'
    for name in "abcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([item] * 9)}]")
        item = f"*{name}"
    return "\n".join(lines) + "\nprofile: demo\ndata: {max_title_chars: *i}\n"


ALIAS_BOMB = _alias_bomb()


@pytest.mark.parametrize("text, message", [
    ("profile: demo\ndata:\n  user_core: 3\n  user_core: 4\n",
     r":4: duplicate key 'user_core' \(first at line 3\)"),
    ("profile: demo\nname: !!python/object/apply:os.system ['echo hi']\n",
     r":2: not valid YAML here \(could not determine a constructor"),
    ("profile: demo\ndata: [1, 2\n", r":3: not valid YAML here"),
    ("profile: demo\nx: " + "[" * 40 + "]" * 40 + "\n", r":2: nested deeper than 32 levels"),
    ("profile: demo\nsft:\n  lr: .nan\n", r"sft.lr: expected a finite number, got nan"),
    ("profile: demo\ndata:\n  max_title_chars: 0\n", r"data.max_title_chars .* at least 1"),
    (ALIAS_BOMB, r"more than 100,000 values once its aliases are expanded"),
])
def test_a_hostile_or_broken_config_file_is_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + message):
        load_config_file(path)


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600  # 9 ** 9 = 387 million strings once expanded
    child = textwrap.dedent(f"""
        import resource
        from cprec_core.config import ConfigError, load_config_file
        with open("/proc/self/status") as fh:
            size = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (size + (100 << 20), size + (100 << 20)))
        try:
            load_config_file({str(path)!r})
        except ConfigError as exc:
            print("refused:", str(exc)[:200])
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "aliases are expanded" in done.stdout
