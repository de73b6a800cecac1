"""The recommendation service on tiny snapshots written in the batch job's format: the fast
path, input validation (never a 500), the rerank gate (timeout, busy) and the hot swap of a
new snapshot under load."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from fastapi.testclient import TestClient

from cprec_core.layout import Layout, RecommendationFiles
from cprec_core.serving import ServiceLimits, SnapshotStore, create_app, published_domains
from cprec_core.serving.__main__ import is_loopback, main

ITEMS = {"m10": "Heat (1995)", "m11": "Fargo (1996)", "m12": "Casino (1995)",
         "m13": "Seven (1995)", "m14": "Rock, The (1996)", "m15": "Kids (1995)"}
FIRST = {"u1": ["m12", "m10", "m15"], "u2": ["m11", "m13", "m14"]}
SECOND = {"u1": ["m14", "m13", "m11"], "u3": ["m10", "m11", "m12"]}


def write_snapshot(files: RecommendationFiles, version: str, recs: dict[str, list[str]],
                   k: int = 3) -> None:
    """A snapshot as the batch job writes it: both Parquet files, then current.json
    replaced atomically."""
    files.path.mkdir(parents=True, exist_ok=True)
    idx = {item_id: i for i, item_id in enumerate(ITEMS)}
    pq.write_table(pa.table({"item_idx": pa.array(idx.values(), pa.int32()),
                             "item_id": list(ITEMS), "title": list(ITEMS.values())}),
                   files.items(version))
    rows = [(u, n, rank, item, 1.0 / rank) for n, (u, items) in enumerate(recs.items())
            for rank, item in enumerate(items[:k], 1)]
    pq.write_table(pa.table({
        "domain": ["Crime"] * len(rows), "user_id": [r[0] for r in rows],
        "user_idx": pa.array([r[1] for r in rows], pa.int32()),
        "rank": pa.array([r[2] for r in rows], pa.int32()),
        "item_id": [r[3] for r in rows],
        "item_idx": pa.array([idx[r[3]] for r in rows], pa.int32()),
        "title": [ITEMS[r[3]] for r in rows], "score": [r[4] for r in rows],
        "stage": ["rerank"] * len(rows), "retrieval_model": ["sasrec"] * len(rows),
        "rerank_system": pa.array(["cprec_rank"] * len(rows), pa.string()),
        "data_version": ["d1"] * len(rows), "snapshot": [version] * len(rows)}),
        files.recommendations(version))
    temp = files.path / "current.json.tmp"
    temp.write_text(json.dumps({
        "version": version, "recommendations": files.recommendations(version).name,
        "items": files.items(version).name, "domain": "Crime", "k": k,
        "created_at": "2026-12-05T10:00:00+00:00", "data_version": "d1",
        "models": {"retrieval": {"model": "sasrec", "trained": "t1"}, "rerank": None}}))
    os.replace(temp, files.current)


@pytest.fixture
def layout(tmp_path):
    layout = Layout(tmp_path, "demo")
    write_snapshot(layout.recommendation_files("crime"), "v1", FIRST)
    return layout


def client(layout, reranker=None, limits=None, refresh_s=1.0) -> TestClient:
    store = SnapshotStore(layout.recommendation_files, ["crime"], refresh_s=refresh_s)
    return TestClient(create_app(store, reranker, limits or ServiceLimits()))


def test_fast_path_answers_source_ids_and_titles(layout):
    answer = client(layout).get("/recommendations/crime/u1")
    assert answer.status_code == 200
    body = answer.json()
    assert {k: body[k] for k in ("domain", "user_id", "k", "snapshot", "data_version")} == {
        "domain": "crime", "user_id": "u1", "k": 3, "snapshot": "v1", "data_version": "d1"}
    assert [(i["rank"], i["item_id"], i["title"], i["stage"]) for i in body["items"]] == [
        (1, "m12", "Casino (1995)", "rerank"), (2, "m10", "Heat (1995)", "rerank"),
        (3, "m15", "Kids (1995)", "rerank")]
    assert body["items"][1]["score"] == 0.5
    two = client(layout).get("/recommendations/crime/u1", params={"k": 2}).json()
    assert two["k"] == 2 and [i["item_id"] for i in two["items"]] == ["m12", "m10"]


@pytest.mark.parametrize("k", ["0", "4", "-1", "ten", "2.5"])
def test_k_outside_one_to_the_snapshots_k_is_422(layout, k):
    answer = client(layout).get("/recommendations/crime/u1", params={"k": k})
    assert answer.status_code == 422
    assert "k" in answer.json()["detail"]


def test_unknown_domain_and_user_are_404_with_reasons(layout):
    service = client(layout)
    domain = service.get("/recommendations/drama/u1")
    assert domain.status_code == 404 and "known domains: crime" in domain.json()["detail"]
    user = service.get("/recommendations/crime/nobody")
    assert user.status_code == 404 and "'nobody'" in user.json()["detail"]


@pytest.mark.parametrize("path", ["/recommendations/Crime%00/u1", "/recommendations/%2E%2E/u1",
                                  "/recommendations/../u1", "/recommendations/crime%2F..%2F/u1",
                                  "/recommendations/" + "a" * 5000 + "/u1"])
def test_bad_slugs_are_404_not_500(layout, path):
    answer = client(layout).get(path)
    assert answer.status_code in (404, 422)
    assert "detail" in answer.json()


def by_idx(slug, history, candidates):
    """Prefers higher item_idx; remembers what it was given."""
    by_idx.calls.append((slug, history, candidates))
    return [float(c) for c in candidates]


def test_rerank_orders_by_the_rerankers_scores(layout):
    by_idx.calls = []
    answer = client(layout, by_idx).post("/rerank", json={
        "domain": "crime", "history": ["m10", "m10"], "candidates": ["m11", "m15", "m13"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(i["rank"], i["item_id"], i["title"]) for i in body["items"]] == [
        (1, "m15", "Kids (1995)"), (2, "m13", "Seven (1995)"), (3, "m11", "Fargo (1996)")]
    assert body["snapshot"] == "v1" and body["seconds"] >= 0
    assert by_idx.calls == [("crime", [0, 0], [1, 5, 3])]


@pytest.mark.parametrize("body, reason", [
    ({"domain": "crime", "candidates": [f"m{i}" for i in range(51)]}, "at most 50"),
    ({"domain": "crime", "candidates": []}, "at least 1"),
    ({"domain": "crime", "candidates": ["m10", "m10"]}, "distinct"),
    ({"domain": "crime", "candidates": ["m10"], "history": ["m11"] * 51}, "at most 50"),
    ({"domain": "crime", "candidates": [10]}, "string"),
    ({"domain": "crime", "candidates": ["m10", "x1"], "history": ["x2"]}, "'x2', 'x1'"),
    ({"domain": "crime", "candidates": ["m10"], "user": "u1"}, "user"),
    (["m10"], "body"),
])
def test_bad_rerank_requests_are_422_naming_the_problem(layout, body, reason):
    answer = client(layout, by_idx).post("/rerank", json=body)
    assert answer.status_code == 422
    assert reason in answer.json()["detail"]


@pytest.mark.parametrize("content, headers, reason", [
    (b'{"domain": "crime", "candidates": [', {"content-type": "application/json"},
     "malformed JSON at character 35"),
    (b"\xff\xfe", {"content-type": "application/json"}, "malformed JSON"),
    (b'{"domain": "crime", "candidates": ["m10"]}', {}, "Content-Type: application/json"),
    (b"domain=crime", {"content-type": "application/x-www-form-urlencoded"}, "JSON object")])
def test_malformed_json_is_422(layout, content, headers, reason):
    answer = client(layout, by_idx).post("/rerank", content=content, headers=headers)
    assert answer.status_code == 422 and reason in answer.json()["detail"]


def test_oversized_body_is_413_declared_or_streamed(layout):
    service = client(layout, by_idx, ServiceLimits(max_body_bytes=1000))
    padded = {"domain": "crime", "candidates": ["m10"], "history": ["m11" + " " * 2000]}
    assert service.post("/rerank", json=padded).status_code == 413
    chunks = (b" " * 600 for _ in range(3))  # chunked: no Content-Length
    assert service.post("/rerank", content=chunks).status_code == 413
    assert service.post("/rerank", json={"domain": "crime", "candidates": ["m10"]}
                        ).status_code == 200


def test_unknown_rerank_domain_is_404_and_no_reranker_503(layout):
    assert client(layout, by_idx).post("/rerank", json={
        "domain": "drama", "candidates": ["m10"]}).status_code == 404
    answer = client(layout).post("/rerank", json={"domain": "crime", "candidates": ["m10"]})
    assert answer.status_code == 503 and "without a reranker" in answer.json()["detail"]


def test_rerank_timeout_504_then_busy_503_until_the_call_really_ends(layout):
    release, mode = threading.Event(), {"slow": True}

    def slow(slug, history, candidates):
        if mode["slow"]:
            release.wait(5)
        return [1.0] * len(candidates)

    limits = ServiceLimits(rerank_timeout_s=0.2, rerank_queue_timeout_s=0.1)
    service = client(layout, slow, limits)
    request = {"domain": "crime", "candidates": ["m10", "m11"]}
    assert service.post("/rerank", json=request).status_code == 504
    busy = service.post("/rerank", json=request)  # the abandoned call still holds the slot
    assert busy.status_code == 503 and "busy" in busy.json()["detail"]
    mode["slow"] = False
    release.set()
    deadline = time.monotonic() + 3
    while (answer := service.post("/rerank", json=request)).status_code == 503:
        assert time.monotonic() < deadline
    assert answer.status_code == 200


def test_reranker_error_is_500_json_without_traceback(layout, caplog):
    def broken(slug, history, candidates):
        raise RuntimeError("model exploded")

    service = client(layout, broken)
    answer = service.post("/rerank", json={"domain": "crime", "candidates": ["m10"]})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "rerank failed (logged by the server)"}
    assert "model exploded" in caplog.text
    again = service.post("/rerank", json={"domain": "crime", "candidates": ["m10"]})
    assert again.status_code == 500  # the slot was released


def test_a_domain_the_reranker_has_no_model_for_is_503(layout):
    def no_model(slug, history, candidates):
        raise LookupError(f"{slug}: the served snapshot was not re-ranked by an LLM")

    answer = client(layout, no_model).post("/rerank", json={"domain": "crime",
                                                             "candidates": ["m10"]})
    assert answer.status_code == 503
    assert answer.json()["detail"] == ("rerank unavailable for crime: crime: the served snapshot"
                                       " was not re-ranked by an LLM")


def test_health_reports_snapshot_provenance(layout):
    answer = client(layout, by_idx).get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["rerank"]["available"] is True
    assert body["rerank"]["max_candidates"] == 50
    crime = body["domains"]["crime"]
    assert {k: crime[k] for k in ("serving", "name", "version", "created_at", "data_version",
                                  "k", "users", "items", "error")} == {
        "serving": True, "name": "Crime", "version": "v1",
        "created_at": "2026-12-05T10:00:00+00:00", "data_version": "d1", "k": 3, "users": 2,
        "items": 6, "error": None}
    assert crime["models"]["retrieval"]["model"] == "sasrec" and crime["loaded_at"]


def poll(check, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return result


def test_a_broken_snapshot_keeps_the_previous_one_serving(layout):
    files = layout.recommendation_files("crime")
    service = client(layout, refresh_s=0)
    write_snapshot(files, "v2", SECOND)
    files.recommendations("v2").unlink()
    health = poll(lambda: (h := service.get("/health").json())["domains"]["crime"]["error"]
                  and h)
    assert health["status"] == "degraded" and "recommendations-v2.parquet" in \
        health["domains"]["crime"]["error"]
    assert service.get("/recommendations/crime/u1").json()["snapshot"] == "v1"


def test_a_domain_without_a_snapshot_is_503_until_one_is_published(tmp_path):
    layout = Layout(tmp_path, "demo")
    service = client(layout, refresh_s=0)
    assert service.get("/health").status_code == 503
    assert service.get("/recommendations/crime/u1").status_code == 503
    write_snapshot(layout.recommendation_files("crime"), "v1", FIRST)
    poll(lambda: service.get("/recommendations/crime/u1").status_code == 200)


def test_hot_swap_under_load_without_a_restart(layout):
    """A real uvicorn server; two clients request continuously while v2 is published."""
    store = SnapshotStore(layout.recommendation_files, ["crime"], refresh_s=0.05)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(store), log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    url = "http://127.0.0.1:%d/recommendations/crime/u1" % sock.getsockname()[1]
    poll(lambda: server.started)
    seen: list[list[tuple[int, str, str]]] = [[], []]
    stop = threading.Event()

    def hammer(answers):
        with httpx.Client() as http:
            while not stop.is_set():
                answer = http.get(url)
                body = answer.json()
                answers.append((answer.status_code, body.get("snapshot"),
                                body.get("items", [{}])[0].get("item_id")))

    clients = [threading.Thread(target=hammer, args=(s,)) for s in seen]
    try:
        for c in clients:
            c.start()
        poll(lambda: all(len(s) > 20 for s in seen))
        write_snapshot(layout.recommendation_files("crime"), "v2", SECOND)
        poll(lambda: all(s[-1][1] == "v2" for s in seen))
        count = [len(s) for s in seen]
        poll(lambda: all(len(s) > n + 20 for s, n in zip(seen, count)))
    finally:
        stop.set()
        for c in clients:
            c.join()
        server.should_exit = True
        serving.join(5)
    for answers in seen:
        assert {status for status, _, _ in answers} == {200}
        versions = [version for _, version, _ in answers]
        swap = versions.index("v2")
        assert set(versions[:swap]) == {"v1"} and set(versions[swap:]) == {"v2"}
        assert {(v, first) for _, v, first in answers} == {("v1", "m12"), ("v2", "m14")}


def test_command_serves_published_domains_and_refuses_to_start_without_any(layout, capsys):
    (layout.root / "recommendations" / "Bad Name").mkdir()
    (layout.root / "recommendations" / "Bad Name" / "current.json").write_text("{}")
    assert published_domains(layout.root / "recommendations") == ["crime"]
    assert main(["--data-dir", str(layout.data_dir / "empty")]) == 2
    assert "no published recommendations" in capsys.readouterr().err
    assert main(["--data-dir", str(layout.data_dir), "--domain", "../x"]) == 2
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "example.org")
            ] == [True, True, True, False, False]


def test_any_user_id_the_data_has_is_servable(tmp_path):
    layout = Layout(tmp_path, "demo")
    odd = ["a/b", "a/../b", "100%", "name with spaces", "ünïcödé", "?q=1", "#x", "/lead"]
    write_snapshot(layout.recommendation_files("crime"), "v1",
                   {user: ["m12", "m10", "m15"] for user in odd})
    service = client(layout)
    for user in odd:
        answer = service.get("/recommendations/crime/" + quote(user, safe=""))
        assert answer.status_code == 200, (user, answer.text)
        assert answer.json()["user_id"] == user
    assert service.get("/recommendations/crime/" + quote("a/c", safe="")).status_code == 404


@pytest.mark.parametrize("key, value", [("recommendations", "../../secret.parquet"),
                                        ("items", "/etc/passwd"), ("version", "../v1")])
def test_snapshot_metadata_cannot_name_a_file_outside_the_snapshot(layout, key, value):
    files = layout.recommendation_files("crime")
    info = json.loads(files.current.read_text())
    service = client(layout, refresh_s=0)
    assert service.get("/recommendations/crime/u1").status_code == 200
    (layout.root / "secret.parquet").write_bytes(files.recommendations("v1").read_bytes())
    files.current.write_text(json.dumps({**info, key: value}))
    health = poll(lambda: (h := service.get("/health").json())["domains"]["crime"]["error"]
                  and h)
    assert value in health["domains"]["crime"]["error"]
    assert service.get("/recommendations/crime/u1").json()["snapshot"] == "v1"
