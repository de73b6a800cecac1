"""The HTTP service: shipped top-k recommendations per user (a dict lookup), an on-demand
rerank of a client's candidates by the injected reranker, and ``/health``.

Bad input never gets a traceback or a 500: validation errors are 422 with a readable
``detail``, unknown domains and users 404, an oversized body 413; only a failing reranker
is a 500, with a JSON body and the traceback in the server's log. There is no
authentication (docs/SERVING.md): the command binds to 127.0.0.1.

No ``from __future__ import annotations`` here: the rerank request model is built per app
from its limits, and FastAPI reads it from the endpoint's live annotation.
"""

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Annotated, Callable

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cprec_core.layout import LayoutError, check_partition_key
from cprec_core.serving.snapshots import Snapshot, SnapshotStore, UnknownDomain

log = logging.getLogger(__name__)

# (domain slug, history item_idx, candidate item_idx) -> one score per candidate, higher is
# better. Slow (seconds), CPU-bound and not thread-safe.
Reranker = Callable[[str, list[int], list[int]], list[float]]

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


@dataclass(frozen=True)
class ServiceLimits:
    max_candidates: int = 50
    max_history: int = 50
    max_body_bytes: int = 64 * 1024
    rerank_concurrency: int = 1  # reranker calls at a time (it is not thread-safe)
    rerank_queue_timeout_s: float = 5.0  # wait for a free slot, else 503 busy
    rerank_timeout_s: float = 30.0  # wait for the scores, else 504


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app
    reads it, by its declared Content-Length or by the bytes actually received (a chunked
    body declares none)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, 413)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class RerankFailed(Exception):
    """The reranker raised or broke its contract; logged where it happened."""


class RerankUnavailable(Exception):
    """The reranker has no model for the domain (e.g. its snapshot was not LLM re-ranked)."""


class RerankGate:
    """Runs the reranker in a worker thread, ``rerank_concurrency`` calls at a time. A slot
    is a threading semaphore released by the call itself when it ends, so a request that
    gave up (504) keeps its slot until the reranker has really stopped: a call never
    overlaps one still running in an abandoned thread. A call abandoned before its thread
    started never runs, and the request releases its slot."""

    POLL_S = 0.01

    def __init__(self, reranker: Reranker, limits: ServiceLimits):
        self.reranker = reranker
        self.limits = limits
        self.slots = threading.BoundedSemaphore(limits.rerank_concurrency)

    async def scores(self, slug: str, history: list[int], candidates: list[int]
                     ) -> tuple[list[float], float]:
        """The candidates' scores and the reranker's seconds."""
        deadline = time.monotonic() + self.limits.rerank_queue_timeout_s
        while not self.slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise HTTPException(503, "busy: every rerank slot is taken, retry later")
            await anyio.sleep(self.POLL_S)
        releaser = threading.Lock()  # held by whoever releases the slot

        def call() -> tuple[list[float], float]:
            if not releaser.acquire(blocking=False):
                return [], 0.0  # the request gave up before this thread started
            started = time.perf_counter()
            try:
                scores = [float(s) for s in self.reranker(slug, history, candidates)]
            except LookupError as exc:  # no model for this domain: not the server's fault
                raise RerankUnavailable(str(exc)) from exc
            except Exception as exc:
                log.exception("reranker failed on %s", slug)
                raise RerankFailed(str(exc)) from exc
            finally:
                self.slots.release()
            if len(scores) != len(candidates) or not all(math.isfinite(s) for s in scores):
                log.error("reranker on %s returned %d scores for %d candidates, or a"
                          " non-finite one", slug, len(scores), len(candidates))
                raise RerankFailed("bad scores")
            return scores, time.perf_counter() - started

        try:
            with anyio.fail_after(self.limits.rerank_timeout_s):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except TimeoutError:
            timeout = self.limits.rerank_timeout_s
            raise HTTPException(504, f"rerank took over {timeout:g} s") from None
        finally:
            if releaser.acquire(blocking=False):
                self.slots.release()


def rerank_request_model(limits: ServiceLimits) -> type[BaseModel]:
    class RerankRequest(BaseModel):
        """Candidates (distinct item ids of the domain) to order for a user whose history
        (item ids, oldest first) is given."""

        model_config = ConfigDict(extra="forbid")
        domain: str
        history: list[ItemId] = Field(default=[], max_length=limits.max_history)
        candidates: list[ItemId] = Field(min_length=1, max_length=limits.max_candidates)

        @field_validator("candidates")
        @classmethod
        def distinct(cls, candidates: list[str]) -> list[str]:
            if len(set(candidates)) != len(candidates):
                raise ValueError("candidates must be distinct item ids")
            return candidates

    return RerankRequest


def _readable(error: dict) -> str:
    if error["type"] == "json_invalid":
        return (f"body: malformed JSON at character {error['loc'][-1]}:"
                f" {error.get('ctx', {}).get('error', error['msg'])}")
    if error["type"] == "model_attributes_type" and tuple(error["loc"]) == ("body",):
        return "body: expected a JSON object, sent with Content-Type: application/json"
    return ".".join(str(p) for p in error["loc"]) + ": " + error["msg"]


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": "; ".join(_readable(e) for e in exc.errors())}, 422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error (logged by the server)"}, 500)


def _domain_status(store: SnapshotStore, slug: str) -> dict:
    domain = store.domain(slug)
    snapshot = domain.snapshot
    if snapshot is None:
        return {"serving": False, "error": domain.error}
    info = snapshot.info
    return {"serving": True, "name": info.get("domain"), "version": snapshot.version,
            "created_at": info.get("created_at"), "data_version": snapshot.data_version,
            "models": info.get("models"), "k": snapshot.k, "users": len(snapshot.users),
            "items": len(snapshot.items), "loaded_at": snapshot.loaded_at,
            "error": domain.error}


def create_app(store: SnapshotStore, reranker: Reranker | None = None,
               limits: ServiceLimits = ServiceLimits()) -> FastAPI:
    app = FastAPI(title="CPRec recommendations")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected)
    gate = RerankGate(reranker, limits) if reranker is not None else None
    RerankRequest = rerank_request_model(limits)

    def snapshot_of(slug: str) -> Snapshot:
        try:
            domain = store.domain(check_partition_key(slug))
        except (LayoutError, UnknownDomain):
            raise HTTPException(404, f"unknown domain {slug[:64]!r}; known domains:"
                                     f" {', '.join(store.domains) or 'none'}") from None
        if domain.snapshot is None:
            raise HTTPException(503, f"no snapshot of {slug} loaded: {domain.error}")
        return domain.snapshot

    # ``:path``: a user id may hold "/" (sent as %2F); the rest of the path is the id
    @app.get("/recommendations/{domain}/{user_id:path}")
    async def recommendations(domain: str, user_id: str,
                              k: Annotated[int | None, Query(ge=1)] = None) -> Response:
        """The user's shipped top-k (default: all of the snapshot's k)."""
        snapshot = snapshot_of(domain)
        if k is not None and k > snapshot.k:
            raise HTTPException(422, f"query.k: must be between 1 and {snapshot.k}"
                                     f" (the snapshot's k), got {k}")
        body = snapshot.response_body(user_id, k or snapshot.k)
        if body is None:
            raise HTTPException(404, f"user {user_id[:64]!r} has no recommendations in"
                                     f" {domain} (snapshot {snapshot.version}): not a user"
                                     " of this domain, or none were exported")
        return Response(body, media_type="application/json")

    @app.post("/rerank")
    async def rerank(request: RerankRequest) -> dict:
        """The candidates ordered by the reranker's scores, best first."""
        if gate is None:
            raise HTTPException(503, "rerank unavailable: the service runs without a reranker")
        snapshot = snapshot_of(request.domain)
        unknown = [i for i in dict.fromkeys(request.history + request.candidates)
                   if i not in snapshot.items]
        if unknown:
            raise HTTPException(422, f"not items of {request.domain}: "
                                     + ", ".join(repr(i) for i in unknown[:20]))
        candidates = [snapshot.items[i] for i in request.candidates]
        try:
            scores, seconds = await gate.scores(
                request.domain, [snapshot.items[i].idx for i in request.history],
                [item.idx for item in candidates])
        except RerankFailed:
            return JSONResponse({"detail": "rerank failed (logged by the server)"}, 500)
        except RerankUnavailable as exc:
            raise HTTPException(503, f"rerank unavailable for {request.domain}: {exc}") from None
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        return {"domain": request.domain, "snapshot": snapshot.version,
                "items": [{"rank": rank, "item_id": candidates[i].item_id,
                           "title": candidates[i].title, "score": scores[i]}
                          for rank, i in enumerate(order, 1)],
                "seconds": round(seconds, 4)}

    @app.get("/health")
    async def health() -> JSONResponse:
        """Per domain the served snapshot and its provenance; 503 when none is served."""
        domains = {slug: _domain_status(store, slug) for slug in store.domains}
        serving = [d["serving"] and not d["error"] for d in domains.values()]
        status = ("ok" if serving and all(serving)
                  else "degraded" if any(d["serving"] for d in domains.values())
                  else "unavailable")
        return JSONResponse({"status": status, "domains": domains,
                             "rerank": {"available": gate is not None, **asdict(limits)}},
                            200 if status != "unavailable" else 503)

    return app
