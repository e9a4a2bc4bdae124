"""Scoring by raw ids: ``seqctr.load(BUNDLE)`` returns a :class:`Scorer`.

Raw ids are the values as they were in the data (``"u42"``, ``42``): an int and its decimal
string name the same id. Unknown users and items are not errors: they take the out-of-vocabulary
path (id 1, the cold-start embedding, with every side feature unknown too). Data whose ids were
given already encoded (LongCTR) has no out-of-vocabulary id: there ids are the dataset's own (user
row, item index) and an unknown one is the padding id 0 ("no information"). Malformed input (a
float, a bool, a list where an id belongs, no candidates list) is an :class:`InputError` naming the
field. Per-user state (history, cache) lives in a store (:mod:`seqctr.serving.stores`); with none
given, an in-process :class:`MemoryStore`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from time import perf_counter as _clock         # (score_ex's argument ``time`` is the request's time)

import numpy as np
import torch

from ..data.dataset import DatasetMeta
from ..data.encode import Vocabulary
from ..data.columns import BadTime, text_times
from ..errors import InputError, TooLarge
from .bundle import Bundle, load_bundle
from .codecs import Codec
from .runtime import append, check_request, fingerprint, prefill, request_time, score
from .stores import MemoryStore, cache_gen


# What the scorer (and so the service) accepts, checked before anything is stored.
MAX_ID_CHARS = 256            # an id's string form (a user or item id longer than this is refused)
TIME_LIMIT = 1 << 62          # |time| < 2**62: fits int64, and so does the difference of any two times
MAX_TIME_CHARS = 64           # a time written as text
HISTORY_WINDOWS = 10          # default cap on a request's history: this many model windows


def raw_id(x, field: str, row: int | None = None) -> str:
    """One raw id as its string form: an int or a string of at most :data:`MAX_ID_CHARS`
    characters of valid Unicode (no lone surrogates); anything else is an :class:`InputError`."""
    if isinstance(x, bool) or not isinstance(x, (int, str, np.integer, np.str_)):
        raise InputError(f"{field}: an id must be a string or an integer, got {type(x).__name__} {x!r}", row=row,
                         field=field)
    if isinstance(x, (int, np.integer)) and not -10 ** MAX_ID_CHARS < x < 10 ** MAX_ID_CHARS:
        raise InputError(f"{field}: an integer id has at most {MAX_ID_CHARS} digits", row=row, field=field)
    s = str(x)
    if len(s) > MAX_ID_CHARS:
        raise InputError(f"{field}: an id has at most {MAX_ID_CHARS} characters, got {len(s)}", row=row,
                         field=field)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{field}: an id must be valid Unicode (it holds a lone surrogate)", row=row,
                         field=field) from None
    return s


def as_time(t, row: int | None = None, field: str = "timestamps") -> int | None:
    """One event time as an int, read as the training data's times are: an int; a finite float,
    truncated; a string through :func:`~seqctr.data.sources.text_times` (a decimal integer or an
    ISO 8601 date); ``None`` stays missing. The result must lie in ``(-2**62, 2**62)``
    (:data:`TIME_LIMIT`: any two times' difference then fits int64 too). Anything else (a bool,
    NaN, "soon", "", 10**30) is an :class:`InputError` naming the row."""
    if t is None:
        return None
    out = None
    if isinstance(t, (bool, np.bool_)):
        pass
    elif isinstance(t, (int, np.integer)):
        out = int(t)
    elif isinstance(t, (float, np.floating)):
        if np.isfinite(t) and abs(t) < TIME_LIMIT:
            out = int(t)
    elif isinstance(t, (str, np.str_)) and len(t) <= MAX_TIME_CHARS:
        try:
            out = int(text_times([t])[0])
        except (BadTime, OverflowError, ValueError):
            pass
    if out is not None and -TIME_LIMIT < out < TIME_LIMIT:
        return out
    shown = repr(t) if len(repr(t)) <= 40 else repr(t)[:37] + "..."
    raise InputError(f"{field}: a time must be an integer, a finite number or an ISO date, with "
                     f"|time| < 2**62, got {type(t).__name__} {shown}", row=row, field=field)


def event_times(times, n: int) -> list[int | None] | None:
    """``n`` event times through :func:`as_time` (missing ones stay ``None``), or ``None`` for none;
    checked before anything is stored."""
    if times is None:
        return None
    out = [as_time(t, i) for i, t in enumerate(times)]
    if len(out) != n:
        raise InputError(f"timestamps: {len(out)} times for {n} events", field="timestamps")
    return out


def fill_times(times, n: int, start: int = 0) -> list[int]:
    """``n`` event times as ints (:func:`as_time`): an event given without a time takes the one
    before it (``start`` for the first)."""
    out, last = [], int(start)
    for t in event_times(times, n) if times is not None else [None] * n:
        if t is not None:
            last = t
        out.append(last)
    return out


def raw_ids(xs, field: str) -> list[str]:
    if isinstance(xs, (str, bytes)) or not hasattr(xs, "__iter__"):
        raise InputError(f"{field}: expected a list of ids, got {type(xs).__name__}", field=field)
    return [raw_id(x, field, i) for i, x in enumerate(xs)]


class Scorer:
    """Score candidates for a user by raw ids, with per-user caches in ``store``.

    - ``score(user, candidates, history=None)``: probabilities ``[N]``. With ``history`` (raw item
      ids, oldest first) exactly that history is scored and nothing is stored; without, the user's
      stored history (empty for a new user) and its cache (built when missing or stale).
    - ``prefill(user, history)``: set the user's stored history and build its cache;
      ``append(user, events)``: extend it and update the cache incrementally.

    Event times (``timestamps``, in the training data's units; ints, finite numbers or ISO dates,
    read as the training data's are) are stored with the events; a
    time-aware model (HSTU's time bias) reads them, and ``time`` of a score request (default: the
    latest event's). An event without a time takes the one before it.
    """

    def __init__(self, bundle: Bundle, store=None, max_len: int | None = None, max_history: int | None = None,
                 codec: str | None = None, rebuild_first_layer: bool | None = None, compiled: bool | None = None):
        self.bundle, self.model = bundle, bundle.model
        self._settings = {"max_len": max_len, "max_history": max_history, "codec": codec,
                          "rebuild_first_layer": rebuild_first_layer, "compiled": compiled}
        # the cache form: as given, else as the bundle records it (seqctr export --cache-codec ...)
        form = bundle.serving_form(codec, rebuild_first_layer)
        codec = form["cache_codec"]
        if form["rebuild_first_layer"]:   # HSTU: first layer rebuilt from the cached ids per request, not stored
            self.model.backbone.set_cache_first_layer(False)
        self.codec = Codec(codec)         # the form caches take in the store (seqctr.serving.codecs)
        self.store = store if store is not None else MemoryStore()
        self.max_len = int(max_len or bundle.max_len)
        # a request's own history: the window's events and the true length beyond it (LAIN reads it)
        self.max_history = int(max_history or HISTORY_WINDOWS * bundle.max_len)
        meta = DatasetMeta.from_dict(bundle.info["meta"])
        self.n_context = len(meta.context_features)
        self.items = torch.from_numpy(np.asarray(bundle.items, np.int64))
        self.users = torch.from_numpy(np.asarray(bundle.users, np.int64))
        # ids as given (LongCTR): items are their own rows, users their row + 2 (rows 0, 1: padding, unknown)
        self.item_vocab = Vocabulary(bundle.vocabs.get("item_id"), size=meta.vocab_sizes["item_id"])
        self.user_vocab = Vocabulary(bundle.vocabs.get("user_id"), size=len(self.users), offset=2)
        self._locks = [threading.Lock() for _ in range(64)]
        self.uses_time = bool(self.model.backbone.uses_time and meta.has_time)
        # the bundle's compiled scoring (seqctr export --compile) when it was made for this form, these
        # weights and this torch: compiled=None where it measured faster than eager, True always, False never;
        # self.compiled None: eager (seqctr.serving.export)
        self.compiled = None
        when = {None: "auto", True: "always", False: "never"}[compiled]
        if bundle.serving.get("compiled") and self.max_len == bundle.max_len:     # (else no import of export)
            from .export import CompiledScoring

            self.compiled = CompiledScoring.of(bundle, form, when)
        if compiled and self.compiled is None:
            raise InputError("compiled: this bundle has no compiled scoring for this cache form, weights and "
                             "torch (seqctr export --compile)", field="compiled")

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.model)

    def with_bundle(self, bundle: Bundle) -> "Scorer":
        """A scorer of another bundle with this one's settings and histories (a live reload,
        :mod:`seqctr.serving.live`): the store's view for the new weights' caches."""
        return Scorer(bundle, self.store.for_model(bundle.fingerprint), **self._settings)

    # -- raw ids -> model inputs ---------------------------------------------------------------
    def item_ids(self, raw: list[str]) -> np.ndarray:
        """Item vocabulary ids of raw item ids (:class:`~seqctr.data.encode.Vocabulary` rules)."""
        return self.item_vocab.ids(raw)

    def item_rows(self, raw: list[str]) -> torch.Tensor:
        """``[N, C]`` item feature ids of raw item ids."""
        return self.items[torch.from_numpy(np.asarray(self.item_ids(raw), np.int64))]

    def user_row(self, user: str) -> torch.Tensor:
        """``[Fu]`` user (and context) feature ids of a raw user id; unknown -> all OOV."""
        row = self.users[int(self.user_vocab.ids([user])[0])]
        if self.n_context:
            row = torch.cat([row, torch.full((self.n_context,), self.user_vocab.unknown, dtype=row.dtype)])
        return row

    def _lock(self, user: str) -> threading.Lock:
        return self._locks[hash(user) % len(self._locks)]

    def _build(self, user: str, items: list[str], times=None):
        """A fresh cache of ``user`` with the history ``items`` (raw ids, oldest first) and their times."""
        hist_time = fill_times(times, len(items)) if self.uses_time else None
        return prefill(self.model, self.user_row(user), self.item_rows(items), max_len=self.max_len,
                       hist_time=hist_time)

    def _valid(self, cache, state: tuple[int, int]) -> bool:
        """A stored cache may be served: these weights made it, from exactly the stored history
        (its length and generation, :meth:`~seqctr.serving.stores.MemoryStore.state`)."""
        return (cache is not None and cache.model_version == self.fingerprint
                and cache.meta.get("max_len") == self.max_len                  # the same window (--window)
                and (cache.history_len, cache_gen(cache)) == tuple(state))

    @staticmethod
    def _stamp(cache, gen: int):
        cache.meta["history_gen"] = int(gen)
        return cache

    # -- API --------------------------------------------------------------------------------------
    def score(self, user, candidates, history=None, history_times=None, time=None) -> np.ndarray:
        return self.score_ex(user, candidates, history, history_times, time)[0]

    def score_ex(self, user, candidates, history=None, history_times=None, time=None,
                 timing: dict | None = None) -> tuple[np.ndarray, bool]:
        """``(probabilities, cached)``: ``cached`` is True when a stored cache was used as it was.
        ``time``: the request's time (for a time-aware model; default the latest event's). Every
        input is checked before any work: ids, times, and a ``history`` of at most
        ``max_history`` events. ``timing``: filled with the seconds spent getting the cache (``cache``:
        the store's read and decode, or the build) and scoring with it (``model``)."""
        timing = {} if timing is None else timing
        user = raw_id(user, "user")
        cands = self.item_rows(raw_ids(candidates, "candidates"))
        time = as_time(time, field="time")
        if history is not None:
            if hasattr(history, "__iter__") and not hasattr(history, "__len__"):
                history = list(history)                                           # a generator: counted too
            if hasattr(history, "__len__") and len(history) > self.max_history:    # before reading any id
                raise TooLarge(f"history: {len(history)} events over the cap of {self.max_history}", field="history")
            items = raw_ids(history, "history")
            times = event_times(history_times, len(items))
            t0 = _clock()
            cache, hit = self._build(user, items, times), False
        else:
            t0 = _clock()
            with self._lock(user):
                cache, hit = self._cache(user)
        t1 = _clock()
        probs = self._score(cache, cands, time)
        timing["cache"], timing["model"] = t1 - t0, _clock() - t1
        return probs, hit

    def _score(self, cache, cands: torch.Tensor, time) -> np.ndarray:
        """Probabilities ``[N]``: through the compiled graph when it takes this request, else eagerly."""
        if self.compiled is not None:
            check_request(self.model, cache, cands)
            out = self.compiled(cache, cands, time)
            if out is not None:
                return out.numpy()
        return score(self.model, cache, cands, time).numpy()

    def _get_cache(self, user: str):
        stored = self.store.get_cache(user)
        return None if stored is None else self.codec.decode(stored)

    def _put_cache(self, user: str, cache):
        """Store ``cache`` in the scorer's codec; returns what a later read gives (the decoded cache)."""
        stored = self.codec.encode(cache)
        self.store.put_cache(user, stored)
        return self.codec.decode(stored)

    def _cache(self, user: str):
        """The user's valid cache (built and stored when missing or stale). Caller holds the lock."""
        cache = self._get_cache(user)
        if self._valid(cache, self.store.state(user)):
            return cache, True
        hist, times, gen = self.store.snapshot(user)
        return self._put_cache(user, self._stamp(self._build(user, hist, times), gen)), False

    def prefill(self, user, history, timestamps=None):
        """Replace the user's stored history by ``history`` and cache it."""
        user = raw_id(user, "user")
        items = raw_ids(history, "history")
        timestamps = event_times(timestamps, len(items))   # refused before anything is stored
        cache = self._build(user, items, timestamps)        # a failure here stores nothing
        with self._lock(user):
            self.store.replace(user, items, timestamps)
            cache = self._stamp(cache, self.store.state(user)[1])
            self._put_cache(user, cache)
        return cache

    def append(self, user, events, timestamps=None):
        """Add ``events`` (raw item ids, oldest first) to the user's history; returns the new
        history length. The new cache is computed first — incrementally (``append``) from a valid
        one, else from the stored history — and the events are stored after it, in one
        transaction: an append that fails stores nothing. When another process appended meanwhile,
        the cache is left to be rebuilt by the next score."""
        user = raw_id(user, "user")
        items = raw_ids(events, "events")
        timestamps = event_times(timestamps, len(items))   # refused before anything is stored
        with self._lock(user):
            cache = self._get_cache(user)
            state = self.store.state(user)
            if self._valid(cache, state):
                new_times = None
                if self.uses_time:         # a missing time continues from the latest cached event's
                    new_times = fill_times(timestamps, len(items), int(request_time(cache)))
                cache = append(self.model, cache, self.item_rows(items), new_times)
            else:
                before, before_ts, gen = self.store.snapshot(user)
                state = (len(before), gen)
                cache = self._build(user, before + items, before_ts + list(timestamps or [None] * len(items)))
            n = self.store.extend(user, items, timestamps)
            if n == state[0] + len(items):             # else another process appended too
                self._put_cache(user, self._stamp(cache, state[1]))
        return n


def load(path: str | Path, store=None, device: str = "cpu", codec: str | None = None,
         rebuild_first_layer: bool | None = None, compiled: bool | None = None) -> Scorer:
    """``seqctr.load(BUNDLE)``: a :class:`Scorer` of an exported bundle (caches stored in ``codec``; HSTU's
    first layer left out of them with ``rebuild_first_layer``; None: as the bundle records; ``compiled``:
    score through the bundle's compiled graph — None: where it has one for this form that measured faster than
    eager when compiled, True: whenever it has one for this form, False: never)."""
    return Scorer(load_bundle(path, device=device), store, codec=codec, rebuild_first_layer=rebuild_first_layer,
                  compiled=compiled)
