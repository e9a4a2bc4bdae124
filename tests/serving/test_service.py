"""The HTTP service, started for real on loopback (uvicorn in a thread, or `seqctr serve` as a
process), with bounded requests: scores equal to the scorer and to the forward pass, append then
score, bad requests as 4xx JSON, concurrent appends to one user, restart with a persisted store,
and the Redis store against a real redis-server."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import seqctr
from seqctr.serving.store import free_port, stop_process
from tests.serving.test_bundle import forward

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


class Served:
    """A uvicorn server on 127.0.0.1 in a background thread; stopped on exit."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "server did not stop"


def service(bundle, store=None, **kw):
    from seqctr.serving.http import create_app
    from seqctr.serving.scorer import Scorer
    from seqctr.serving.bundle import load_bundle

    scorer = Scorer(load_bundle(bundle), store)
    return scorer, Served(create_app(scorer, **kw))


def test_scores_over_http_equal_the_scorer_and_the_forward_pass(trained):
    rows, bundle, _ = trained
    scorer, served = service(bundle)
    ref = seqctr.load(bundle)
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u2"][:30]
    cands = sorted(set(rows["item"]))[:12]
    with served as http:
        r = http.post("/v1/score", json={"user": "u2", "candidates": cands, "history": history})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == ref.fingerprint and body["cached"] is False
        np.testing.assert_allclose(body["scores"], ref.score("u2", cands, history=history), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(body["scores"], forward(ref, "u2", history, cands), rtol=1e-5, atol=1e-6)
        # events appended over HTTP, then the stored-history path: equal to the whole history at once
        for k in range(0, len(history), 7):
            events = [{"item": x, "timestamp": 1_700_000_000 + k + i} for i, x in enumerate(history[k:k + 7])]
            r = http.post("/v1/users/u2/events", json={"events": events})
            assert r.status_code == 200 and r.json()["history_len"] == min(k + 7, len(history))
        first = http.post("/v1/score", json={"user": "u2", "candidates": cands}).json()
        again = http.post("/v1/score", json={"user": "u2", "candidates": cands}).json()
        np.testing.assert_allclose(first["scores"], body["scores"], rtol=1e-5, atol=1e-6)
        assert first["cached"] is True and again["cached"] is True, "append kept the cache current"
        assert http.get("/healthz").json()["status"] == "ok"
        metrics = http.get("/metrics").text
        assert 'seqctr_requests_total{endpoint="/v1/score",status="200"} 3.0' in metrics
        assert "seqctr_cache_hits_total 2.0" in metrics and "seqctr_cache_bytes" in metrics
        assert http.get("/docs").status_code == 200 and "/v1/score" in http.get("/openapi.json").text
        # the docs page is served from this host alone (no CDN): every asset it names is here
        page = http.get("/docs").text
        assert "cdn" not in page.lower() and "https://" not in page
        for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
            assert asset in page and http.get(asset).status_code == 200


BAD = [
    (b"{not json", 422, "JSON"),
    (b'{"user": "u1"}', 422, "candidates"),
    (b'{"user": "u1", "candidates": []}', 422, "candidates"),
    (b'{"user": 1.5, "candidates": ["i1"]}', 422, "user"),
    (b'{"user": "u1", "candidates": "i1"}', 422, "candidates"),
    (b'{"user": "u1", "candidates": ["i1", null]}', 422, "candidates"),
    (b'{"user": "u1", "candidates": ["i1"], "extra": 1}', 422, "extra"),
    (b'[1, 2]', 422, "body"),
]


def test_bad_requests_get_4xx_json_and_the_service_stays_up(trained):
    _, bundle, _ = trained
    scorer, served = service(bundle, max_candidates=5, max_body=4096)
    with served as http:
        for body, status, needle in BAD:
            r = http.post("/v1/score", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.status_code, r.text)
            assert needle in r.json()["error"], (body, r.json())
        r = http.post("/v1/score", json={"user": "u1", "candidates": ["i1"] * 6})
        assert r.status_code == 413 and "cap of 5" in r.json()["error"]
        r = http.post("/v1/score", content=b'{"user": "u1", "candidates": ["' + b"x" * 5000 + b'"]}',
                      headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4096" in r.json()["error"]
        # no Content-Length (chunked): counted as it arrives, refused past the cap
        big = (b'{"user": "u1", "candidates": ["' + b"x" * 1000 + b'"]}' for _ in range(5))
        r = http.post("/v1/score", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4096" in r.json()["error"]
        small = (part for part in (b'{"user": "u1", ', b'"candidates": ["i1"]}'))
        r = http.post("/v1/score", content=small, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text          # a small chunked body is replayed to the app whole
        # every refusal is counted: the candidate cap, the Content-Length cap and the chunked cap
        assert 'seqctr_requests_total{endpoint="/v1/score",status="413"} 3.0' in http.get("/metrics").text
        r = http.post("/v1/users/u1/events", json={"events": []})
        assert r.status_code == 422
        r = http.post("/v1/users/u1/events", json={"events": [{"item": "i1", "when": 3}]})
        assert r.status_code == 422 and "when" in r.json()["error"]
        # event times are read as the training data's: ints, numbers, ISO dates; anything else is a 400
        # naming the event, and nothing of that request is stored
        r = http.post("/v1/users/u9/events", json={"events": [{"item": "i1", "timestamp": 1_700_000_000.0},
                                                              {"item": "i2", "timestamp": "2024-01-01T00:00:00Z"},
                                                              {"item": "i3"}]})
        assert r.status_code == 200, r.text
        assert scorer.store.timeline("u9") == (["i1", "i2", "i3"], [1_700_000_000, 1_704_067_200, None])
        r = http.post("/v1/users/u9/events", json={"events": [{"item": "i4", "timestamp": 5}, {"item": "i5", "timestamp": "soon"}]})
        assert r.status_code == 400 and "row 1: timestamps" in r.json()["error"] and "'soon'" in r.json()["error"]
        r = http.post("/v1/score", json={"user": "u9", "candidates": ["i1"], "timestamp": "later"})
        assert r.status_code == 400 and "time: a time must be" in r.json()["error"]
        assert scorer.store.timeline("u9")[0] == ["i1", "i2", "i3"]
        assert http.get("/healthz").status_code == 200, "still serving"


def test_concurrent_requests_for_one_user_do_not_corrupt_its_cache(trained):
    rows, bundle, _ = trained
    scorer, served = service(bundle)
    items = sorted(set(rows["item"]))
    cands = items[:5]
    with served as http:
        def work(i):
            r1 = http.post("/v1/users/hot/events", json={"events": [items[i % len(items)], items[(i * 7) % len(items)]]})
            r2 = http.post("/v1/score", json={"user": "hot", "candidates": cands})
            return r1.status_code, r2.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(work, range(40)))
        assert all(c == (200, 200) for c in codes)
        history = scorer.store.history("hot")
        assert len(history) == 80
        final = http.post("/v1/score", json={"user": "hot", "candidates": cands}).json()
    np.testing.assert_allclose(final["scores"], seqctr.load(bundle).score("hot", cands, history=history),
                               rtol=1e-5, atol=1e-6)


def serve_process(bundle, port, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "seqctr", "serve", "--model", str(bundle), "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"seqctr serve did not come up: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)


def test_restart_with_a_persisted_history_loses_nothing(trained, tmp_path):
    rows, bundle, _ = trained
    db = tmp_path / "histories.sqlite"
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u7"][:20]
    cands = sorted(set(rows["item"]))[:4]
    port = free_port()
    proc = serve_process(bundle, port, "--history-file", str(db))
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/users/u7/events", json={"events": history}, timeout=30)
        assert r.json()["history_len"] == len(history) > 0
    finally:
        stop_process(proc)
    proc = serve_process(bundle, port, "--history-file", str(db))      # a new process: empty caches
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"user": "u7", "candidates": cands}, timeout=30)
        body = r.json()
    finally:
        stop_process(proc)
    assert body["cached"] is False, "the cache was rebuilt from the persisted history"
    np.testing.assert_allclose(body["scores"], seqctr.load(bundle).score("u7", cands, history=history),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_store_across_two_services(trained):
    """Two service instances on one Redis: an append through one is seen by the other, and a
    cache written for a shorter history is rebuilt, never served."""
    pytest.importorskip("redis")
    from seqctr.serving.store import local_redis
    from seqctr.serving.stores import RedisStore

    rows, bundle, _ = trained
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u9"][:16]
    assert len(history) > 10
    cands = sorted(set(rows["item"]))[:5]
    with local_redis() as url:
        fp = seqctr.load(bundle).fingerprint
        a, served_a = service(bundle, RedisStore(url, fingerprint=fp))
        b, served_b = service(bundle, RedisStore(url, fingerprint=fp))
        with served_a as ha, served_b as hb:
            assert ha.post("/v1/users/u9/events", json={"events": history[:10]}).status_code == 200
            s1 = hb.post("/v1/score", json={"user": "u9", "candidates": cands}).json()       # b builds the cache
            assert ha.post("/v1/users/u9/events", json={"events": history[10:]}).status_code == 200
            s2 = hb.post("/v1/score", json={"user": "u9", "candidates": cands}).json()
    ref = seqctr.load(bundle)
    np.testing.assert_allclose(s1["scores"], ref.score("u9", cands, history=history[:10]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s2["scores"], ref.score("u9", cands, history=history), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2])
def test_turns_bound_the_holders_and_serve_waiters_in_arrival_order(n):
    """``--score-slots``' turnstile: never more than n holders; a freed slot goes to the longest waiter
    (with one slot the order of entry is exactly the order of arrival)."""
    from seqctr.serving.http import _Turns

    turns, inside, most, order = _Turns(n), [0], [0], []
    lock = threading.Lock()
    gate = threading.Event()

    def hold(i):
        with turns:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                order.append(i)
            gate.wait(5)
            with lock:
                inside[0] -= 1

    threads = []
    for i in range(6):                    # the first n take the slots; the others queue in this order
        threads.append(threading.Thread(target=hold, args=(i,)))
        threads[-1].start()
        deadline = time.time() + 5
        while len(turns.queue) < max(0, i + 1 - n) and time.time() < deadline:
            time.sleep(0.005)
    assert list(turns.queue) and len(turns.queue) == 6 - n
    gate.set()
    for t in threads:
        t.join(10)
    assert most[0] == n and sorted(order[:n]) == list(range(n)) and sorted(order) == list(range(6))
    if n == 1:
        assert order == list(range(6))
    assert turns.n == n and not turns.queue          # every slot back


def test_score_slots_serve_concurrent_requests_one_at_a_time_with_the_same_scores(trained):
    rows, bundle, _ = trained
    items = sorted(set(rows["item"]))
    scorer, served = service(bundle, score_slots=1)
    with served as http:
        assert http.post("/v1/users/u/events", json={"events": items[:30]}).status_code == 200
        want = http.post("/v1/score", json={"user": "u", "candidates": items[:20]}).json()["scores"]

        def one(_):
            r = http.post("/v1/score", json={"user": "u", "candidates": items[:20]})
            return r.status_code, r.json()["scores"], r.headers["server-timing"]

        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(one, range(24)))
    assert all(code == 200 and np.allclose(s, want, rtol=1e-6, atol=1e-7) for code, s, _ in got)
    from seqctr.serving.http import parse_server_timing

    timings = [parse_server_timing(t) for _, _, t in got]
    waits, models = [t["wait"] for t in timings], [t["model"] for t in timings]
    assert max(waits) >= min(models) > 0                      # a request waited out another's whole scoring
