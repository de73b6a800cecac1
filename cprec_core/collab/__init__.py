"""Collaborative (ID-based) recommenders: the classic baselines and LLaRA's item encoders."""
