"""Model bundles and raw-id scoring: a trained run exported, loaded without unpickling, scored by raw
ids equal to the full forward pass; fingerprint sensitivity; damaged and foreign bundles refused;
batch predict against the scorer."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import seqctr
from seqctr.cli import main
from seqctr.data import SeqBatch
from seqctr.errors import InputError, SeqctrError
from seqctr.serving.bundle import load_bundle
from seqctr.serving.runtime import fingerprint
from tests.helpers import synthetic_interactions, write_csv


def train_run(root, name="twin", string_ids=True, options=None, lain=False):
    """A tiny trained run (1 epoch) on a synthetic table with string ids, exported as a bundle (``lain``:
    with a small LAIN plug-in)."""
    rows = synthetic_interactions(n_users=20, seed=11, string_ids=string_ids)
    src = write_csv(root / "inter.csv", rows)
    opts = options if options is not None else (
        {"topk": 4, "short_seq_len": 4, "attention_dim": 8} if name in ("twin", "sim", "eta") else {})
    cfg = {"data": {"source": str(src), "max_len": 16, "batch_size": 64, "label": {"column": "label"},
                    "columns": {"category": "category", "user_features": ["age"]}},
           "model": {"name": name, "embedding_dim": 8, "mlp_hidden": [16], "options": opts,
                     **({"lain": {"enabled": True, "fourier_dim": 8, "hidden": 16, "cond_dim": 8}} if lain else {})},
           "train": {"epochs": 1, "threads": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "c.yaml"), "--out", str(root / "run"), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(root / "run" / "best.pt"), "--out", str(root / "bundle")]) == 0
    return rows, root / "bundle"


def forward(scorer, user, history, candidates):
    """The ordinary forward pass over internal ids: the reference for raw-id scoring."""
    hist = scorer.item_rows([str(x) for x in history])[-scorer.max_len:]
    cands = scorer.item_rows([str(x) for x in candidates])
    batch = SeqBatch.for_candidates(scorer.user_row(str(user)), hist, cands, len(history))
    with torch.no_grad():
        return torch.sigmoid(scorer.model(batch).logits).numpy()


def test_checkpoints_load_without_unpickling(trained):
    _, _, root = trained
    for f in ("best.pt", "last.pt"):
        ck = torch.load(root / "run" / f, weights_only=True)
        assert "model" in ck and "config" in ck


def test_raw_id_scores_equal_the_forward_pass(trained):
    rows, bundle, _ = trained
    scorer = seqctr.load(bundle)
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u3"][:25]
    cands = sorted(set(rows["item"]))[:9] + ["never-seen-item"]
    got = scorer.score("u3", cands, history=history)
    np.testing.assert_allclose(got, forward(scorer, "u3", history, cands), rtol=1e-5, atol=1e-6)
    # the stored-history path: prefill, then score from the cache (and again: a hit)
    scorer.prefill("u3", history)
    p1, hit1 = scorer.score_ex("u3", cands)
    p2, hit2 = scorer.score_ex("u3", cands)
    np.testing.assert_allclose(p1, got, rtol=1e-5, atol=1e-6)
    assert (hit1, hit2) == (True, True) and np.array_equal(p1, p2)


def test_unknown_users_and_items_take_the_oov_path(trained):
    rows, bundle, _ = trained
    scorer = seqctr.load(bundle)
    oov_user = scorer.user_row("nobody")
    assert (oov_user == 1).all(), "an unknown user is out-of-vocabulary in every user feature"
    assert (scorer.item_rows(["nothing"]) == 1).all()
    p = scorer.score("nobody", ["nothing", rows["item"][0]], history=["also-nothing"])
    np.testing.assert_allclose(p, forward(scorer, "nobody", ["also-nothing"], ["nothing", rows["item"][0]]),
                               rtol=1e-5, atol=1e-6)
    cold = scorer.score("new-user", [rows["item"][0]])          # no stored history: scored on an empty one
    np.testing.assert_allclose(cold, forward(scorer, "new-user", [], [rows["item"][0]]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("user,cands,field", [(1.5, ["i1"], "user"), ("u1", "i1", "candidates"),
                                              ("u1", ["i1", None], "candidates"), (True, ["i1"], "user"),
                                              ("u1", [["i1"]], "candidates")])
def test_malformed_input_names_the_field(trained, user, cands, field):
    scorer = seqctr.load(trained[1])
    with pytest.raises(InputError, match=field):
        scorer.score(user, cands)


def test_append_then_score_equals_scoring_the_longer_history(trained):
    rows, bundle, _ = trained
    scorer = seqctr.load(bundle)
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u5"]
    cands = sorted(set(rows["item"]))[:6]
    scorer.prefill("u5", history[:7])
    for k in range(7, len(history), 5):
        assert scorer.append("u5", history[k:k + 5]) == min(k + 5, len(history))
    p, hit = scorer.score_ex("u5", cands)
    assert hit, "append kept the cache valid"
    np.testing.assert_allclose(p, scorer.score("u5", cands, history=history), rtol=1e-5, atol=1e-6)


def test_fingerprint_changes_with_any_element(trained):
    scorer = seqctr.load(trained[1])
    model = scorer.model
    before = fingerprint(model)
    w = model.embedding.tables["item_id"].weight
    with torch.no_grad():
        w[[2, 3]] = w[[3, 2]].clone()                 # two rows swapped: sums unchanged, bytes not
    assert fingerprint(model) != before
    with torch.no_grad():
        w[[2, 3]] = w[[3, 2]].clone()
    assert fingerprint(model) == before
    with torch.no_grad():
        model.head.net[0].bias[0] += 1e-7
    assert fingerprint(model) != before


def test_fingerprint_follows_assigned_and_moved_tensors(trained):
    """The per-model tensor list fingerprint keeps between requests is rebuilt when a parameter, a buffer or
    a submodule is assigned; a moved tensor (new storage) is seen too. Each change is compared with a
    fresh copy of the model (nothing kept), so a stale list would show as a mismatch."""
    import copy

    model = seqctr.load(trained[1]).model

    def fresh(m):
        c = copy.deepcopy(m)
        for kept in ("_fingerprint_tensors", "_fingerprint_structure", "_fingerprint_key", "_fingerprint"):
            c.__dict__.pop(kept, None)
        return fingerprint(c)

    fp0 = fingerprint(model)
    head = model.head.net[0]
    head.bias = torch.nn.Parameter(head.bias.detach() + 1.0)             # a parameter assigned
    assert fingerprint(model) == fresh(model) != fp0
    fp1 = fingerprint(model)
    model.head.net[0] = torch.nn.Linear(head.in_features, head.out_features)   # a submodule replaced
    assert fingerprint(model) == fresh(model) != fp1
    fp2 = fingerprint(model)
    model.double()                                                         # every tensor moved to new storage
    assert fingerprint(model) == fresh(model) != fp2
    fp3 = fingerprint(model)
    model.head.register_buffer("probe", torch.zeros(2))                   # a buffer registered, then assigned
    assert fingerprint(model) == fresh(model) != fp3
    fp4 = fingerprint(model)
    model.head.probe = torch.ones(2)
    assert fingerprint(model) == fresh(model) != fp4


def test_scoring_registers_no_module(trained):
    """A cached request builds no module, parameter or buffer (as slicing an ``nn.Sequential`` would): any
    such registration makes :func:`fingerprint` rebuild its tensor list, on every request."""
    from seqctr.serving import runtime

    rows, bundle, _ = trained
    scorer = seqctr.load(bundle)
    history = [x for u, x in zip(rows["user"], rows["item"]) if u == "u3"][:25]
    cands = sorted(set(rows["item"]))[:9]
    scorer.score("u1", cands, history=history)
    before = runtime._structure[0]
    scorer.score("u1", cands, history=history)
    scorer.prefill("u2", history)
    scorer.score("u2", cands)
    assert runtime._structure[0] == before


def test_damaged_or_foreign_bundles_are_refused(trained, tmp_path):
    import shutil

    _, bundle, _ = trained
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    w = (b / "items.npy").read_bytes()
    (b / "items.npy").write_bytes(w[:-4] + bytes(4 * [255]))
    with pytest.raises(SeqctrError, match="items.npy is damaged"):
        load_bundle(b)
    shutil.rmtree(b)
    shutil.copytree(bundle, b)
    info = json.loads((b / "bundle.json").read_text())
    info["version"] = "2.0"
    (b / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(SeqctrError, match="format 2.0"):
        load_bundle(b)
    with pytest.raises(SeqctrError, match="not a seqctr bundle"):
        load_bundle(tmp_path)


def test_predict_scores_each_event_after_its_users_earlier_events(trained, tmp_path):
    rows, bundle, _ = trained
    sub = {k: v[:300] for k, v in rows.items()}
    src = write_csv(tmp_path / "new.csv", sub)
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--model", str(bundle), "--input", str(src), "--out", str(out), "--chunk", "64",
                 "--label-column", "label", "--no-progress"]) == 0
    t = pq.read_table(out).to_pydict()
    assert sorted(t["row"]) == list(range(1, 301)) and "label" in t
    scorer = seqctr.load(bundle)
    events = sorted(zip(sub["user"], sub["timestamp"], sub["item"], range(1, 301)), key=lambda e: (e[0], e[1], e[2]))
    for k in range(0, 300, 37):
        r = t["row"].index(events[k][3])
        u = events[k][0]
        history = [e[2] for e in events if e[0] == u and (e[1], e[2]) < (events[k][1], events[k][2])]
        assert t["history_len"][r] == len(history)
        np.testing.assert_allclose(t["score"][r], scorer.score(u, [events[k][2]], history=history)[0],
                                   rtol=1e-5, atol=1e-6)


def test_bundle_of_a_longctr_model_scores_by_its_given_ids(tmp_path, monkeypatch):
    """LongCTR data carries no raw vocabularies: the bundle scores by the dataset's own ids (user row,
    item index), and user features that are not an id (here a gender column) still reach the model."""
    from tests.data.test_longctr import write_longctr

    monkeypatch.setenv("SEQCTR_HOME", str(tmp_path / "home"))
    seqs, _, splits = write_longctr(tmp_path / "lc", seed=4)
    cfg = {"data": {"source": str(tmp_path / "lc"), "max_len": 16, "batch_size": 32},
           "model": {"name": "sim", "embedding_dim": 8, "mlp_hidden": [8],
                     "options": {"topk": 4, "short_seq_len": 4, "attention_dim": 8}},
           "train": {"epochs": 1, "threads": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "b")]) == 0
    scorer = seqctr.load(tmp_path / "b")
    u = int(splits["test"]["user_index"][0])
    row = scorer.user_row(str(u))
    assert row[0] == (u % 2) + 1, "the user's gender feature, looked up by the user row"
    history = seqs[u][:5]
    cands = [int(x) for x in splits["test"]["item_index"][:4]]
    np.testing.assert_allclose(scorer.score(str(u), cands, history=history),
                               forward(scorer, u, history, cands), rtol=1e-5, atol=1e-6)
    assert (scorer.user_row("999") == 0).all() and (scorer.item_rows(["999"]) == 0).all(), \
        "no OOV id in given-id data: unknown -> padding"
