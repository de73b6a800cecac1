"""The HTTP service for shipped recommendations (docs/SERVING.md): the batch job's snapshots
held in memory (``snapshots``) behind a FastAPI app (``app``); ``python -m
cprec_core.serving`` runs it."""

from cprec_core.serving.app import Reranker, ServiceLimits, create_app
from cprec_core.serving.snapshots import SnapshotStore, published_domains

__all__ = ["Reranker", "ServiceLimits", "SnapshotStore", "create_app", "published_domains"]
