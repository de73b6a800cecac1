"""Dagster definitions for CPRec: assets, partitions, resources and checks only."""
