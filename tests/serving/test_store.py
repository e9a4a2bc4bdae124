"""RedisCacheStore against a real redis-server started by the test (skipped when it is not installed)."""
from __future__ import annotations

import shutil
import socket

import pytest
import torch

from seqctr.serving.store import RedisCacheStore, local_redis
from seqctr.serving.runtime import fingerprint, prefill, score
from tests.serving.test_cache import MAX_LEN, make, random_user

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_url():
    with local_redis() as url:
        yield url


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    c.flushdb()
    return c


def test_caches_round_trip_through_redis_and_score_the_same(synth_ds, client):
    """A CollectiveKV model's caches, written in one pipeline and read back in one MGET, score
    exactly as the originals; a user never written reads as None in its place."""
    model = make(synth_ds, "twin", collective_kv={"user_dim": 1, "pool_size": 64, "branches": ["short", "long"]})
    store = RedisCacheStore(client, namespace=f"seqctr:{fingerprint(model)}")
    caches, cands = {}, None
    for uid, T in (("u1", 0), ("u2", 5), ("u3", 30)):
        user, hist, cands = random_user(synth_ds, T, seed=T + 1)
        caches[uid] = prefill(model, user[0], hist, max_len=MAX_LEN)
    store.put_many(caches, ttl_s=60)
    got = store.get_many(["u3", "nobody", "u1", "u2"])
    assert got[1] is None
    for uid, back in zip(["u3", "u1", "u2"], [got[0], got[2], got[3]]):
        want = caches[uid]
        assert back.history_len == want.history_len and back.model_version == want.model_version
        for k, t in want.tensors.items():
            assert back.tensors[k].dtype == t.dtype and torch.equal(back.tensors[k], t)
        assert torch.equal(score(model, back, cands), score(model, want, cands))
    assert 0 < client.pttl(store.key("u2")) <= 60_000
    assert [len(b) for b in store.get_bytes(["u2", "nobody"]) if b] == [len(caches["u2"].to_bytes())]
    assert store.delete("u1", "nobody") == 1 and store.get("u1") is None and store.get_many([]) == []


def test_namespaces_keep_models_apart(synth_ds, client):
    model = make(synth_ds, "sim")
    user, hist, _ = random_user(synth_ds, 6, seed=4)
    a, b = RedisCacheStore(client, namespace="m1"), RedisCacheStore(client, namespace="m2")
    a.put("u", prefill(model, user[0], hist, max_len=MAX_LEN))
    assert b.get("u") is None and a.get("u").history_len == 6


def test_a_damaged_value_is_an_error_naming_its_key(synth_ds, client):
    model = make(synth_ds, "sim")
    user, hist, _ = random_user(synth_ds, 6, seed=5)
    store = RedisCacheStore(client, namespace="ns")
    store.put("ok", prefill(model, user[0], hist, max_len=MAX_LEN))
    client.set(store.key("cut"), client.get(store.key("ok"))[:-10])
    with pytest.raises(ValueError, match="redis key 'ns:cut': KV cache truncated"):
        store.get_many(["ok", "cut"])
    client.set(store.key("junk"), b"hello")
    with pytest.raises(ValueError, match="redis key 'ns:junk': not a seqctr KV cache"):
        store.get("junk")
    ok, cut, junk, gone = store.get_many(["ok", "cut", "junk", "gone"], damaged="miss")   # a server's choice
    assert ok.history_len == 6 and cut is None and junk is None and gone is None
    with pytest.raises(ValueError, match="damaged must be"):
        store.get_many(["ok"], damaged="ignore")


def test_local_redis_serves_then_stops():
    with local_redis() as url:
        c = redis.Redis.from_url(url)
        assert c.ping() and c.set("k", b"v") and c.get("k") == b"v"
        port = c.connection_pool.connection_kwargs["port"]
        c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_local_redis_says_what_is_missing(monkeypatch):
    import seqctr.serving.store as store

    monkeypatch.setattr(store.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install redis-server"):
        with local_redis():
            pass


def test_a_history_file_of_the_older_layout_is_upgraded_in_place(tmp_path):
    """Files written before the users table: their users get their lengths, appends continue after
    the stored events, and nothing stored is lost."""
    import sqlite3

    from seqctr.serving.stores import MemoryStore

    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events (user TEXT, pos INTEGER, item TEXT, ts INTEGER, PRIMARY KEY (user, pos))")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", [("a", 0, "i1", 5), ("a", 1, "i2", 6), ("b", 0, "i9", None)])
    conn.commit()
    conn.close()
    store = MemoryStore(history_file=db)
    assert store.state("a") == (2, 0) and store.state("b") == (1, 0) and store.state("nobody") == (0, 0)
    assert store.extend("a", ["i3"], [7]) == 3
    assert store.timeline("a") == (["i1", "i2", "i3"], [5, 6, 7])
    store.replace("b", ["x"])
    assert store.state("b") == (1, 1), "a replace moves the generation on"
    store.close()
