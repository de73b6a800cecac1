"""The registry of systems and CPT variants: what the config, assets and leaderboard read."""

import pytest

from cprec_core.config import ConfigError, load_profile
from cprec_core.systems import (CPT_VARIANTS, SFT_SYSTEM_NAMES, SYSTEMS, TEXT_SYSTEMS,
                                automated_assets, embedding_asset, evaluation_inputs, is_cprec,
                                leaderboard_rank, lora_init, system)


def test_every_cpt_variant_has_an_asset_and_two_sft_systems_starting_from_it():
    """One with the paper's recipe, one with the candidate-aware objective (and for the
    WSA adapter, the headline, a residual ranker, as for the fresh LoRA)."""
    for variant in CPT_VARIANTS:
        starting = [s for s in SYSTEMS if s.kind == "sft" and s.cpt_variant == variant.name]
        assert [s.objective for s in starting] == ["ntp", "rank"] + (
            ["residual"] if variant.name == "wsa" else [])
        assert starting[0].asset.startswith("sft_adapter")
        assert starting[1].asset.startswith("sft_rank_adapter")
        assert starting[1].name == starting[0].name + "_rank"
    assert [v.asset for v in CPT_VARIANTS][0] == "cpt_adapter"
    assert len({s.name for s in SYSTEMS}) == len(SYSTEMS)
    assert len({s.asset for s in SYSTEMS if s.kind == "sft"}) == len(SFT_SYSTEM_NAMES)


def test_what_each_system_is():
    residual = [s.name for s in SYSTEMS if s.residual]
    assert residual == ["llara_residual", "cprec_residual"]
    assert all(system(n).ranks_candidates and system(n).all_seeds for n in residual)
    assert system("cprec_residual").cpt_variant == "wsa" and system("llara_residual").cpt_variant is None
    assert system("llara").cpt_variant is None and lora_init("llara") == "none"
    assert lora_init("cprec_ds_only") == "CPT ds_only"
    assert [is_cprec(n) for n in ("cprec", "cprec_zero_shot", "cprec_shuffled_control",
                                  "llara", "base", "gru4rec")] == [True] * 3 + [False] * 3
    assert leaderboard_rank("random") < leaderboard_rank("gru4rec") < leaderboard_rank("cprec")
    assert leaderboard_rank("cprec") < leaderboard_rank("cprec_rank") < leaderboard_rank(
        "cprec_rank (shuffled emb)") < leaderboard_rank("fused") < leaderboard_rank("unknown")
    assert is_cprec("fused") and is_cprec("cprec_rank") and not is_cprec("llara_rank")
    assert system("llara_rank").ranks_candidates and not system("llara").ranks_candidates
    assert system("cprec").all_seeds and not system("cprec_ds_only").all_seeds
    with pytest.raises(KeyError, match="unknown system"):
        system("cprec_typo")


def test_the_evaluation_reads_every_weight_and_waits_for_the_automated_ones():
    inputs = set(evaluation_inputs())
    assert {"sasrec", "gru4rec", "cpt_adapter", "llara_adapter", "sft_adapter",
            "sft_adapter_ds_only"} <= inputs
    text = {f"{encoder}_text_{source}" for encoder in ("sasrec", "gru4rec")
            for source in ("base", "cpt", "control", "cpt_target")} | {"sasrec_text_base_shuffled"}
    assert inputs - automated_assets() == {
        "sft_adapter_ds_only", "sft_adapter_ds_mix_shuffled", "sft_adapter_shuffled_control",
        "sft_adapter_wsa_target", "sft_rank_adapter_ds_only",
        "sft_rank_adapter_ds_mix_shuffled", "sft_rank_adapter_shuffled_control",
        "sft_rank_adapter_wsa_target", "dpo_adapter", "llara_dpo_adapter", *text}


def test_text_systems_name_their_encoder_and_embedding_source():
    cpt, base = system("sasrec_text_cpt"), system("gru4rec_text_base")
    assert (cpt.kind, cpt.next_item, cpt.item_source, cpt.cpt_variant) == (
        "text", "sasrec", "wsa", "wsa")
    assert cpt.is_cprec and not base.is_cprec and base.next_item == "gru4rec"
    assert system("sasrec_text_control").item_source == "shuffled_control"
    assert system("sasrec_text_cpt_target").item_source == "wsa_target"
    arm = system("sasrec_text_base_shuffled")
    assert (arm.item_source, arm.shuffled_vectors, arm.is_cprec) == ("base", True, False)
    assert not any(s.shuffled_vectors for s in TEXT_SYSTEMS if s is not arm)
    assert embedding_asset("wsa") == "item_embeddings_wsa"
    with pytest.raises(KeyError):
        embedding_asset("wsd")
    with pytest.raises(ConfigError, match=r"item_text.systems \['sasrec_text_typo'\]"):
        load_profile("demo", {"item_text": {"systems": ["sasrec_text_typo"]}})
    # a text system whose CPT variant the profile does not train
    with pytest.raises(ConfigError, match=r"sasrec_text_control.*cpt.variants"):
        load_profile("demo", {"item_text": {"systems": ["sasrec_text_control"]}})


def test_dpo_systems_start_from_the_candidate_aware_sft_systems():
    dpo = system("cprec_dpo")
    assert (dpo.kind, dpo.sft_init, dpo.asset, dpo.pairs_asset) == (
        "dpo", "cprec_rank", "dpo_adapter", "dpo_pairs")
    assert dpo.ranks_candidates and dpo.is_cprec and not system("llara_dpo").is_cprec
    assert system("llara_dpo").pairs_asset == "llara_dpo_pairs"
    assert system("cprec_rank").pairs_asset is None
    with pytest.raises(ConfigError, match=r"dpo.systems \['cprec_rank'\]"):
        load_profile("demo", {"dpo": {"systems": ["cprec_rank"]}})


def test_profiles_name_only_registered_systems():
    with pytest.raises(ConfigError, match=r"sft.systems \['cprec_typo'\]"):
        load_profile("demo", {"sft": {"systems": ["cprec_typo"]}})
    with pytest.raises(ConfigError, match=r"cpt.variants \['wsd'\]"):
        load_profile("demo", {"cpt": {"variants": ["wsd"]}})
    study = load_profile("study")
    assert study.sft.seeds_for("cprec") == (0, 1, 2) and study.sft.seeds_for("cprec_ds_only") == (0,)


def test_every_shuffled_row_belongs_to_its_system_and_follows_it():
    from cprec_core.systems import SHUFFLES, is_shuffled, leaderboard_rank, unshuffled

    for suffix in SHUFFLES.values():
        assert unshuffled("cprec_rank" + suffix) == "cprec_rank" and is_shuffled("cprec_rank" + suffix)
        assert leaderboard_rank("cprec_rank" + suffix) == leaderboard_rank("cprec_rank") + 1
    assert unshuffled("cprec_rank") == "cprec_rank" and not is_shuffled("sasrec")
