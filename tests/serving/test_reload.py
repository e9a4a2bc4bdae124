"""A live model swap (``POST /v1/admin/reload``) under load, as operators run it: two workers, a
shared history file. Every answer names the weights that scored it (its scores equal that bundle's
offline scores), no request fails, every worker follows, histories are kept and caches of the old
weights are never served."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import seqctr
from tests.serving.servers import Serve

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
fastapi = pytest.importorskip("fastapi")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def two_bundles(trained, tmp_path_factory):
    """The trained bundle A and a bundle B of the same model with other weights."""
    import os

    from seqctr.checkpoint import load_checkpoint
    from seqctr.models import load_trained
    from seqctr.serving.bundle import write_bundle

    rows, bundle_a, root = trained
    old = os.environ.get("SEQCTR_HOME")
    os.environ["SEQCTR_HOME"] = str(root / "home")
    try:
        model, cfg, ds, folder = load_trained(root / "run" / "best.pt")
    finally:
        os.environ.pop("SEQCTR_HOME") if old is None else os.environ.__setitem__("SEQCTR_HOME", old)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    bundle_b = write_bundle(model, cfg, ds, folder, tmp_path_factory.mktemp("b") / "bundle",
                            load_checkpoint(root / "run" / "best.pt")["meta"])
    return rows, bundle_a, bundle_b


def _requests(rows, n=24):
    users = sorted(set(rows["user"]))
    items = [str(i) for i in rows["item"]]
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        u = str(users[k % len(users)])
        hist = [items[j] for j in rng.integers(0, len(items), 12)]
        out.append({"user": u, "history": hist, "candidates": [items[j] for j in rng.integers(0, len(items), 5)]})
    return out


def test_admin_route_is_off_without_a_token_and_checks_it(two_bundles):
    from fastapi.testclient import TestClient

    from seqctr.serving.http import create_app

    _, a, b = two_bundles
    with TestClient(create_app(seqctr.load(a))) as c:
        assert c.post("/v1/admin/reload", json={}).status_code == 404
    s = seqctr.load(a)
    fp_a = s.fingerprint
    with TestClient(create_app(s, admin_token=TOKEN)) as c:
        assert c.post("/v1/admin/reload", json={}).status_code == 401
        assert c.post("/v1/admin/reload", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = c.post("/v1/admin/reload", json={"model": str(a) + "-missing"}, headers=AUTH)
        assert r.status_code == 400 and "bundle" in r.json()["error"]
        assert c.get("/healthz").json()["model"] == fp_a           # a refused reload changes nothing
        r = c.post("/v1/admin/reload", json={"model": str(b)}, headers=AUTH)
        assert r.status_code == 200 and r.json()["previous"] == fp_a and r.json()["generation"] == 1
        assert c.get("/healthz").json()["model"] == r.json()["model"] != fp_a


def test_reload_under_load_two_workers(two_bundles, tmp_path):
    rows, a, b = two_bundles
    sa, sb = seqctr.load(a), seqctr.load(b)
    assert sa.fingerprint != sb.fingerprint
    reqs = _requests(rows)
    expect = {s.fingerprint: [s.score(r["user"], r["candidates"], history=r["history"]) for r in reqs] for s in (sa, sb)}
    results, errors = [], []
    reloaded = threading.Event()
    with Serve(a, "--workers", 2, "--history-file", tmp_path / "h.sqlite", "--admin-token", TOKEN) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:            # a user's history and cache under A
            assert c.post("/v1/users/u-kept/events", json={"events": ["i1", "i2", "i3"]}).json()["history_len"] == 3
            first = c.post("/v1/score", json={"user": "u-kept", "candidates": ["i4"]}).json()
            assert first["model"] == sa.fingerprint

        def client(k):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                for i in range(60):
                    j = (k * 60 + i) % len(reqs)
                    if k == 0 and i == 20:
                        r = c.post("/v1/admin/reload", json={"model": str(b)}, headers=AUTH)
                        if r.status_code != 200:
                            errors.append(("reload", r.status_code, r.text))
                        reloaded.set()
                    r = c.post("/v1/score", json=reqs[j])
                    if r.status_code != 200:
                        errors.append((j, r.status_code, r.text))
                    else:
                        results.append((j, r.json()))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors[:3]
        assert reloaded.is_set()
        scored = results
        assert len(scored) == 8 * 60
        seen = {r["model"] for _, r in scored}
        assert seen == {sa.fingerprint, sb.fingerprint}
        for j, r in scored:       # no answer is scored by mixed weights: its scores are its model's
            np.testing.assert_allclose(r["scores"], expect[r["model"]][j], rtol=0, atol=1e-5)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            import time

            time.sleep(1.0)                                              # every worker follows
            after = [c.post("/v1/score", json=reqs[i % len(reqs)]).json()["model"] for i in range(30)]
            assert set(after) == {sb.fingerprint}
            gens = {c.get("/healthz").json()["generation"] for _ in range(20)}
            assert gens == {1}
            # the history is kept; the cache made by A is not served to B
            r = c.post("/v1/score", json={"user": "u-kept", "candidates": ["i4"]}).json()
            assert r["model"] == sb.fingerprint
            np.testing.assert_allclose(r["scores"], sb.score("u-kept", ["i4"], history=["i1", "i2", "i3"]), atol=1e-5)
            assert c.post("/v1/users/u-kept/events", json={"events": ["i5"]}).json()["history_len"] == 4
