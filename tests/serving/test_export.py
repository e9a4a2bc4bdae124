"""Cached scoring captured as a graph (``seqctr export --compile``): the exported program equals eager
scoring on every backbone that can be captured, DIEN is refused with its reason, and the AOTInductor-compiled
bundle scores as the eager bundle through ``seqctr.load`` and a real server — fresh, stored and appended
caches, windows and candidate counts across the captured range, eager outside it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import seqctr
from seqctr.errors import InputError, SeqctrError
from seqctr.serving.export import FILE, capture, compiler, min_window
from seqctr.serving.runtime import prefill, request_time, score
from tests.serving.conftest import train_in_own_home

CAPTURED = ["din", "sdim", "sim", "twin", "eta", "hstu"]
OPTIONS = {"twin": {"topk": 4, "short_seq_len": 4, "attention_dim": 8},
           "sim": {"topk": 4, "short_seq_len": 4, "attention_dim": 8},
           "eta": {"topk": 4, "short_seq_len": 4, "attention_dim": 8},
           "hstu": {"num_layers": 2, "max_len": 16}}


def _bundle(tmp_path_factory, name):
    root = tmp_path_factory.mktemp(f"export_{name}")
    return train_in_own_home(root, name=name, options=OPTIONS.get(name, {}))[1]


@pytest.mark.parametrize("name,select", [(n, "op") for n in CAPTURED] + [(n, "dense") for n in ("sim", "twin", "eta")])
def test_the_exported_program_equals_eager_scoring(tmp_path_factory, name, select):
    """Windows from the shortest captured one to the model's max_len, 1 to 50 candidates: the program
    torch.export traced once (at other shapes) gives eager scoring's probabilities within 1e-5, with a top-k
    selection captured either as seqctr's op or as plain torch ops (then no seqctr op in the graph)."""
    scorer = seqctr.load(_bundle(tmp_path_factory, name))
    program, spec = capture(scorer, max_candidates=50, select=select)
    assert spec["min_window"] == min_window(scorer.model) and spec["max_window"] == scorer.max_len
    calls = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert ("seqctr.topk_positions.default" in calls) == (select == "op" and spec["min_window"] > 1)
    assert spec["select"] == select
    _assert_program_equals_eager(scorer, program, spec, sorted({spec["min_window"], 9, scorer.max_len}), (1, 7, 50), 1)


def _assert_program_equals_eager(scorer, program, spec, windows, counts, seed, decoded=False):
    """The exported program against eager scoring: a cache per window (through the scorer's codec when
    ``decoded``), ``counts`` candidates each; within 1e-5."""
    run = program.module()
    g = torch.Generator().manual_seed(seed)
    for T in windows:
        hist = scorer.items[torch.randint(2, len(scorer.items), (T,), generator=g)]
        times = list(range(0, 3 * T, 3)) if scorer.uses_time else None
        cache = prefill(scorer.model, scorer.user_row("u1"), hist, max_len=scorer.max_len, hist_time=times)
        if decoded:
            cache = scorer.codec.decode(scorer.codec.encode(cache))
        tensors = {n: t.contiguous() for n, t in cache.tensors.items()}
        assert sorted(tensors) == spec["inputs"]
        for N in counts:
            cands = scorer.items[torch.randint(2, len(scorer.items), (N,), generator=g)]
            args = [cands, torch.tensor([cache.history_len]), tuple(tensors[n] for n in spec["inputs"])]
            if spec["time"]:
                args.append(request_time(cache))
            with torch.no_grad():
                got = run(*args)
            torch.testing.assert_close(got, score(scorer.model, cache, cands), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["din", "twin"])
def test_a_lain_model_reads_the_history_length_from_the_graph_input(tmp_path_factory, name):
    """LAIN conditions on the true history length, which can exceed the window: the captured graph takes it as
    an input (not the example's value baked in) — one cache scored as 16, 23 and 300 events gives eager's
    three different answers."""
    root = tmp_path_factory.mktemp(f"export_lain_{name}")
    scorer = seqctr.load(train_in_own_home(root, name=name, options=OPTIONS.get(name, {}), lain=True)[1])
    assert scorer.model.lain is not None
    program, spec = capture(scorer, max_candidates=50)
    run = program.module()
    g = torch.Generator().manual_seed(3)
    hist = scorer.items[torch.randint(2, len(scorer.items), (16,), generator=g)]
    cands = scorer.items[torch.randint(2, len(scorer.items), (9,), generator=g)]
    outs = []
    for seq_len in (16, 23, 300):
        cache = prefill(scorer.model, scorer.user_row("u1"), hist, seq_len=seq_len, max_len=scorer.max_len)
        tensors = {n: t.contiguous() for n, t in cache.tensors.items()}
        with torch.no_grad():
            got = run(cands, torch.tensor([seq_len]), tuple(tensors[n] for n in spec["inputs"]))
        want = score(scorer.model, cache, cands)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        outs.append(want)
    assert not torch.allclose(outs[0], outs[2], atol=1e-6)         # the length does move the scores


CKV = {"twin": {**OPTIONS["twin"], "collective_kv": {"user_dim": 1, "pool_size": 32, "branches": ["short", "long"]}},
       "hstu": {**OPTIONS["hstu"], "collective_kv": {"user_dim": 1, "pool_size": 32}}}


@pytest.mark.parametrize("name,codec,lean", [("twin", "int8", False), ("hstu", "fp32", True), ("hstu", "int8", False)])
def test_collective_kv_caches_are_captured_in_their_served_form(tmp_path_factory, name, codec, lean):
    """CollectiveKV caches (codes + user parts), decoded from the codec the bundle serves with, HSTU's first
    layer left out and rebuilt from the ids: the graph routes every row itself (no memo, no data-dependent
    de-duplication) and equals eager scoring of the decoded cache."""
    root = tmp_path_factory.mktemp(f"export_ckv_{name}")
    scorer = seqctr.load(train_in_own_home(root, name=name, options=CKV[name])[1], codec=codec,
                         rebuild_first_layer=lean)
    program, spec = capture(scorer, max_candidates=50)
    assert any("_idx_" in n for n in spec["inputs"]) and spec["form"] == {"cache_codec": codec,
                                                                          "rebuild_first_layer": lean}
    _assert_program_equals_eager(scorer, program, spec, (spec["min_window"], 11, scorer.max_len), (13,), 5,
                                 decoded=True)


def test_dien_is_refused_with_its_reason(tmp_path_factory, monkeypatch, capsys):
    """One line naming the backbone and why (no graph dump); ``seqctr export --compile`` says the bundle was
    written without compiled scoring, and that bundle serves eagerly."""
    from seqctr.cli import main

    bundle = _bundle(tmp_path_factory, "dien")
    with pytest.raises(SeqctrError, match="dien backbone's cached scoring cannot be captured"):
        capture(seqctr.load(bundle))
    monkeypatch.setenv("SEQCTR_HOME", str(bundle.parent / "home"))
    capsys.readouterr()
    out = bundle.parent / "compiled"
    assert main(["export", "--checkpoint", str(bundle.parent / "run" / "best.pt"), "--out", str(out), "--compile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without compiled scoring" in err[0] and "dien" in err[0]
    assert seqctr.load(out).compiled is None


@pytest.fixture(scope="module")
def compiled(hstu_bundle, tmp_path_factory):
    if compiler() is None:
        pytest.skip("AOTInductor needs a C++ compiler (g++)")
    """The time-aware HSTU bundle exported again with ``--compile`` (the CLI): ``(rows, eager bundle, compiled)``."""
    from seqctr.cli import main

    rows, bundle, _ = hstu_bundle
    out = tmp_path_factory.mktemp("compiled") / "bundle"
    old = os.environ.get("SEQCTR_HOME")
    os.environ["SEQCTR_HOME"] = str(bundle.parent / "home")
    try:
        assert main(["export", "--checkpoint", str(bundle.parent / "run" / "best.pt"), "--out", str(out),
                     "--compile", "--max-candidates", "64"]) == 0
    finally:
        os.environ.pop("SEQCTR_HOME") if old is None else os.environ.__setitem__("SEQCTR_HOME", old)
    return rows, bundle, out


def _items(rows):
    return [str(i) for i in dict.fromkeys(rows["item"])]


def test_the_compiled_bundle_scores_as_the_eager_one(compiled):
    """Request histories of 0 to 2x the window (short ones and an empty one run eagerly), 1 to 64
    candidates and over the cap (eager), stored caches after prefill and after an in-place append
    (strided and contiguous K/V): equal within 1e-5, through the compiled graph wherever it applies."""
    rows, bundle, out = compiled
    eager, fast = seqctr.load(bundle), seqctr.load(out, compiled=True)
    assert eager.compiled is None and fast.compiled is not None
    items = _items(rows)
    calls = []
    real = fast.compiled.runner
    fast.compiled.runner = lambda *a: calls.append(a[0].shape[0]) or real(*a)
    for n_hist in (0, 1, 5, 16, 32):
        for n_cand in (1, 20, 64, 65):
            cands = (items * 3)[:n_cand]
            hist = (items * 2)[:n_hist]
            times = list(range(100, 100 + 7 * n_hist, 7))
            np.testing.assert_allclose(fast.score("u1", cands, history=hist, history_times=times),
                                       eager.score("u1", cands, history=hist, history_times=times), rtol=0, atol=1e-5)
    assert 1 in calls and 64 in calls and 65 not in calls      # in range: compiled; over the cap: eager
    for s in (eager, fast):
        s.prefill("u2", items[:12], list(range(12)))
    cands = items[:30]
    np.testing.assert_allclose(fast.score("u2", cands), eager.score("u2", cands), rtol=0, atol=1e-5)
    for s in (eager, fast):
        s.append("u2", items[12:15], [20, 21, 22])
    n = len(calls)
    np.testing.assert_allclose(fast.score("u2", cands, time=30), eager.score("u2", cands, time=30), rtol=0, atol=1e-5)
    assert len(calls) == n + 1


def test_the_compiled_graph_is_part_of_the_bundle_and_checked(compiled, tmp_path):
    """Recorded in bundle.json and checksummed (damage is refused); another torch version or compiled=False
    score eagerly; compiled=True on a bundle without it is an error naming the field."""
    rows, bundle, out = compiled
    info = json.loads((out / "bundle.json").read_text())
    spec = info["serving"]["compiled"]
    assert FILE in info["files"] and spec["file"] == FILE and spec["max_candidates"] == 64
    m = spec["measured"]
    assert m["eager_ms"] > 0 and m["compiled_ms"] > 0 and m["candidates"] == 64 and m["events"] == 16
    assert seqctr.load(out, compiled=False).compiled is None
    for speedup, used in ((0.5, False), (1.5, True)):    # by default: used where it measured faster
        where = tmp_path / f"measured{speedup}"
        shutil.copytree(out, where)
        edited = json.loads(json.dumps(info))
        edited["serving"]["compiled"]["measured"]["speedup"] = speedup
        (where / "bundle.json").write_text(json.dumps(edited))
        assert (seqctr.load(where).compiled is not None) is used
        assert seqctr.load(where, compiled=True).compiled is not None
    with pytest.raises(InputError, match="compiled"):
        seqctr.load(bundle, compiled=True)
    other = tmp_path / "other"
    shutil.copytree(out, other)
    info["serving"]["compiled"]["torch"] = "0.0.0"
    (other / "bundle.json").write_text(json.dumps(info))
    assert seqctr.load(other).compiled is None
    with open(other / FILE, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 8)
    with pytest.raises(SeqctrError, match=f"{FILE} is damaged"):
        seqctr.load(other)


def test_the_service_scores_through_the_compiled_graph(compiled, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from tests.serving.servers import Serve

    rows, bundle, out = compiled
    items = _items(rows)
    want = seqctr.load(bundle).score("u3", items[:10], history=items[:14], history_times=list(range(14)))
    body = {"user": "u3", "candidates": items[:10],
            "history": [{"item": i, "timestamp": t} for t, i in enumerate(items[:14])]}
    for flags, used in ((("--compiled", "always"), True), (("--compiled", "never"), False)):
        with Serve(out, *flags) as srv:
            assert httpx.get(f"{srv.url}/healthz", timeout=30).json()["compiled"] is used
            got = httpx.post(f"{srv.url}/v1/score", json=body, timeout=30).json()
            assert got["scores"] == pytest.approx(want.tolist(), abs=1e-5)


def test_concurrent_requests_through_the_compiled_graph(compiled):
    """The service calls the scorer from a thread pool: 8 threads scoring different users at once through one
    compiled graph get each user's eager scores."""
    from concurrent.futures import ThreadPoolExecutor

    rows, bundle, out = compiled
    eager, fast = seqctr.load(bundle), seqctr.load(out, compiled=True)
    items = _items(rows)
    jobs = [(f"u{k}", items[k:k + 9 + k % 5], items[:24]) for k in range(16)]
    want = [eager.score(u, c, history=h, history_times=list(range(len(h)))) for u, h, c in jobs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda j: fast.score(j[0], j[2], history=j[1], history_times=list(range(len(j[1])))),
                            jobs * 4))
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, want[k % len(jobs)], rtol=0, atol=1e-5)
