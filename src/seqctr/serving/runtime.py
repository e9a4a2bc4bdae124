"""Serving a :class:`CTRModel` from per-user caches, on vocabulary ids.

``prefill(model, user, hist) -> KVCache`` runs everything that does not depend on the candidate
once per user (each backbone's own ``Backbone.prefill``); ``score(model, cache, candidates)`` scores
many candidates against it and equals the full forward pass; ``append(model, cache, new_events)``
extends the history in place where the backbone can do it exactly. A time-aware backbone (HSTU's
time bias) also takes the events' times (``hist_time``, ``new_times``) and the request's
(``time``; default: the latest event's); the cache then keeps the window's times under ``time``. ``fingerprint(model)`` names
the weights: a cache made by other weights is refused.

Raw ids (strings, ints as they were in the data) are the job of :mod:`seqctr.serving.scorer`.
"""
from __future__ import annotations

import hashlib

import torch

from ..models import Backbone, CTRModel
from ..models.base import expand
from .cache import KVCache


# Bumped whenever any module anywhere registers a parameter, buffer or submodule (also by assignment):
# the tensor list :func:`fingerprint` keeps per model is rebuilt only then, not per request.
_structure = [0]


def _registered(*_) -> None:
    _structure[0] += 1


for _hook in (torch.nn.modules.module.register_module_parameter_registration_hook,
              torch.nn.modules.module.register_module_buffer_registration_hook,
              torch.nn.modules.module.register_module_module_registration_hook):
    _hook(_registered)


def _tensors(model: CTRModel) -> list:
    """``(name, tensor)`` of every weight and buffer (the tensors themselves, not detached copies), kept
    until some module's structure changes (:data:`_structure`): ``state_dict()`` walks every submodule
    and detaches every tensor, too slow to repeat per request."""
    if getattr(model, "_fingerprint_structure", None) != _structure[0]:
        model._fingerprint_tensors = list(model.state_dict(keep_vars=True).items())
        model._fingerprint_structure = _structure[0]
    return model._fingerprint_tensors


def fingerprint(model: CTRModel) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (weights and buffers): change any
    element of any tensor and it changes. Recomputed only when some tensor changed (PyTorch counts
    in-place updates in ``tensor._version``; a move or ``.data`` assignment changes its storage; an
    assigned parameter, buffer or submodule changes the list), so asking per request costs a pass over
    a few dozen tensors' counters. (A submodule deleted with ``del`` is not seen: serving models are not
    pruned in place.)"""
    state = _tensors(model)
    key = tuple((t.data_ptr(), t._version, t.dtype) for _, t in state)
    if getattr(model, "_fingerprint_key", None) != key:
        h = hashlib.sha256()
        for name, t in state:
            a = t.detach().cpu().contiguous()
            h.update(f"{name}|{a.dtype}|{list(a.shape)}|".encode())
            h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
        model._fingerprint_key, model._fingerprint = key, h.hexdigest()[:32]
    return model._fingerprint


def check_version(model: CTRModel, cache: KVCache) -> None:
    if cache.model_version != fingerprint(model):
        raise ValueError("this cache was made by other model weights; prefill again")


@torch.no_grad()
def _times(model: CTRModel, times, n: int, what: str) -> torch.Tensor | None:
    """Event times as ``[1, n]`` int64 for a time-aware backbone (None for any other, or none given)."""
    if times is None or not model.backbone.uses_time:
        return None
    t = torch.as_tensor(times, dtype=torch.long).reshape(1, -1)
    if t.shape[1] != n:
        raise ValueError(f"{what}: {t.shape[1]} times for {n} events")
    return t


@torch.no_grad()
def prefill(model: CTRModel, user: torch.Tensor, hist: torch.Tensor, seq_len: int | None = None,
            max_len: int | None = None, mode: str = "cache", hist_time=None) -> KVCache:
    """Cache one user: ``user [Fu]`` feature ids, ``hist [T, Fi]`` item feature ids (oldest
    first), optionally their times ``hist_time [T]``. Keeps the most recent ``max_len`` events;
    ``seq_len`` defaults to ``T``. ``mode="recompute"`` keeps only the embedded history (the
    uncached baseline)."""
    emb = model.embedding
    emb.check_ids(hist, "item", "prefill(hist)", rows="events")
    emb.check_ids(user, "user", "prefill(user)")
    T = hist.shape[0]
    time = _times(model, hist_time, T, "prefill(hist_time)")
    seq_len = T if seq_len is None else seq_len
    if max_len is not None:
        hist = hist[max(T - max_len, 0):]
        time = None if time is None else time[:, max(T - max_len, 0):]
    x = model.history_inputs(hist.unsqueeze(0), torch.tensor([seq_len], device=hist.device),
                             None if time is None else time.to(hist.device))
    run = Backbone.prefill if mode == "recompute" else type(model.backbone).prefill
    state = dict(run(model.backbone, x))
    state["user"] = emb.user(user.unsqueeze(0))
    state["ids"] = hist.to(torch.int32).unsqueeze(0)     # item ids of the window: for append, and SIM's GSU keys
    state["user_ids"] = user.to(torch.int32)
    if time is not None:
        state["time"] = time.to(hist.device)
    return KVCache({k: v for k, v in state.items() if v is not None}, seq_len, fingerprint(model),
                   {"backbone": model.backbone.registry_name, "mode": mode, "max_len": max_len})


@torch.no_grad()
def append(model: CTRModel, cache: KVCache, new_events: torch.Tensor, new_times=None) -> KVCache:
    """A cache for the history extended by ``new_events [n, Fi]`` (oldest first; times
    ``new_times [n]`` when the cache keeps times). Updated in place of a full recompute wherever
    the backbone can do it exactly; else prefilled again from the stored ids. Returns a new
    :class:`KVCache`."""
    check_version(model, cache)
    emb = model.embedding
    emb.check_ids(new_events, "item", "append(new_events)", rows="events")
    old_time = cache.tensors.get("time")
    new_time = _times(model, new_times, new_events.shape[0], "append(new_times)")
    if (old_time is None) != (new_time is None):
        raise ValueError("append: the cache keeps event times, so new_times are needed (and only then)"
                         if old_time is not None else "append: this cache keeps no event times; prefill with hist_time")
    ids = cache.tensors["ids"][0].long()
    max_len, mode = cache.meta.get("max_len"), cache.meta.get("mode", "cache")
    seq_len = cache.history_len + new_events.shape[0]
    all_ids = torch.cat([ids, new_events.to(ids.device)], 0)
    n_evict = 0 if max_len is None else max(all_ids.shape[0] - max_len, 0)
    lain_depends = model.lain is not None and model.backbone.cache_uses_condition
    if mode == "cache" and not lain_depends and new_events.shape[0] > 0:
        new = model.history_inputs(new_events.unsqueeze(0), torch.tensor([seq_len]), new_time, condition=False)
        evicted = emb.items(ids[:n_evict].unsqueeze(0)) if n_evict else None
        state = type(model.backbone).append(model.backbone, dict(cache.tensors), new, evicted, max_len)
        if state is not None:
            state["ids"] = all_ids[n_evict:].to(torch.int32).unsqueeze(0)
            return KVCache(state, seq_len, cache.model_version, dict(cache.meta))
    all_time = None if old_time is None else torch.cat([old_time[0], new_time[0].to(old_time.device)])
    return prefill(model, cache.tensors["user_ids"].long(), all_ids, seq_len, max_len, mode, all_time)


def check_request(model: CTRModel, cache: KVCache, candidates: torch.Tensor) -> None:
    check_version(model, cache)
    model.embedding.check_ids(candidates, "item", "score(candidates)", rows="candidates")


def request_time(cache: KVCache, time=None) -> torch.Tensor | None:
    """The candidates' time for a cache that keeps event times: ``time`` (a number, or ``[N]``),
    by default the latest cached event's (0 for an empty history); None for any other cache."""
    t = cache.tensors.get("time")
    if t is None:
        return None
    if time is None:
        time = int(t[0, -1]) if t.shape[1] else 0
    return torch.as_tensor(time, dtype=torch.long, device=t.device).reshape(-1)


def _backbone_output(model: CTRModel, cache: KVCache, candidates: torch.Tensor, time=None):
    x = model.candidate_inputs(candidates, cache.history_len, request_time(cache, time))
    run = Backbone.score if cache.meta.get("mode") == "recompute" else type(model.backbone).score
    return x.target, run(model.backbone, cache.tensors, x)


@torch.no_grad()
def backbone_output(model: CTRModel, cache: KVCache, candidates: torch.Tensor, time=None):
    """``(embedded candidates [N, D], the backbone's output)`` for the cached user: the pooled
    interest vectors ``[N, out_dim]`` the head then scores (tests compare them with the forward pass's)."""
    check_request(model, cache, candidates)
    return _backbone_output(model, cache, candidates, time)


@torch.no_grad()
def score(model: CTRModel, cache: KVCache, candidates: torch.Tensor, time=None) -> torch.Tensor:
    """Click probabilities ``[N]`` of ``candidates [N, Fi]`` for the cached user (at ``time``, for
    a cache that keeps event times: see :func:`request_time`)."""
    check_request(model, cache, candidates)
    if candidates.shape[0] == 0:                   # nothing to score (the layers need a batch)
        return torch.zeros(0, device=candidates.device)
    return probabilities(model, cache, candidates, time)


def probabilities(model: CTRModel, cache: KVCache, candidates: torch.Tensor, time=None) -> torch.Tensor:
    """:func:`score`'s computation without its checks: what :mod:`seqctr.serving.export` captures."""
    target, out = _backbone_output(model, cache, candidates, time)
    user = expand(cache.tensors["user"], target.shape[0])
    return torch.sigmoid(model.logits(user, target, out.vector))
