"""Serve a profile's published recommendations over HTTP (docs/SERVING.md).

    python -m cprec_core.serving --profile demo [--config F] [--data-dir D]
        [--host 127.0.0.1] [--port 8000] [--domain slug ...] [--no-rerank] [--access-log]

There is no authentication: it binds to 127.0.0.1 unless told otherwise, and says so when
told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import gc
import logging
import sys

import uvicorn

from cprec_core.cli import add_profile_arguments, profile_from_args
from cprec_core.config import Profile
from cprec_core.layout import check_partition_key
from cprec_core.serving.app import Reranker, create_app
from cprec_core.serving.snapshots import SnapshotStore, published_domains

log = logging.getLogger("cprec_core.serving")


def load_reranker(profile: Profile) -> Reranker | None:
    """The profile's reranker, or None (logged) when there is none to load."""
    try:
        from cprec_core.recommend.rerank import load_reranker as load
    except ImportError as exc:
        log.warning("rerank unavailable: %s", exc)
        return None
    reranker = load(profile)
    if reranker is None:
        log.warning("rerank unavailable: the profile has no trained reranker")
    return reranker


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = add_profile_arguments(argparse.ArgumentParser(
        prog="python -m cprec_core.serving", description=__doc__.split("\n")[0]))
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: no authentication)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--domain", action="append",
                        help="serve this domain (repeatable); default: every published one")
    parser.add_argument("--no-rerank", action="store_true", help="no /rerank (answers 503)")
    parser.add_argument("--access-log", action="store_true",
                        help="a log line per request (off: a proxy in front logs them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    try:
        profile = profile_from_args(args)
        root = profile.layout.root / "recommendations"
        slugs = [check_partition_key(s) for s in args.domain or published_domains(root)]
    except ValueError as exc:  # ConfigError, LayoutError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not slugs:
        print(f"error: no published recommendations under {root}: run the recommendations"
              " job first", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        log.warning("binding %s: the service has no authentication; put an authenticating"
                    " reverse proxy in front of it (docs/SERVING.md)", args.host)
    store = SnapshotStore(profile.layout.recommendation_files, slugs)
    reranker = None if args.no_rerank else load_reranker(profile)
    app = create_app(store, reranker)
    # what is loaded by now (libraries, the model, the first snapshots) lives as long as the
    # process: kept out of the collector's full passes, which would otherwise walk it and
    # stall requests
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port,
                access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
