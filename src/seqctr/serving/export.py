"""Cached scoring captured as one compiled graph: ``torch.export`` + AOTInductor (``seqctr export --compile``).

:func:`capture` traces :func:`seqctr.serving.runtime.probabilities` for one bundle's serving form into a
:class:`torch.export.ExportedProgram` whose inputs are the candidates' item feature ids ``[N, Fi]``, the
history length ``[1]``, one user's cache tensors (as the bundle's codec decodes them; the window length
``T`` dynamic) and, for a time-aware model, the request's time ``[1]``; its output is the click
probabilities ``[N]``. :func:`compile_bundle` compiles it ahead of time into the bundle (``scoring.pt2``,
recorded in ``bundle.json``'s ``serving.compiled`` with its speed against eager measured there); the
:class:`~seqctr.serving.scorer.Scorer` then scores through it — by default where it measured faster — whenever a
request's shapes lie in the captured range (:class:`CompiledScoring`), eagerly otherwise.

Equal to eager scoring within 1e-5 in float32 (tested per backbone). A backbone whose cached scoring has
data-dependent control flow (DIEN's recurrence over the window) cannot be captured: refused with the reason.
Selections of ``k`` events (SIM, TWIN, ETA) are captured in the form ``select`` names
(:func:`seqctr.ops.select.traced_form`): ``op`` (default), the eager selection as one opaque op the compiled graph
calls back, or ``dense``, plain torch ops (a top-k over every score; slower, but the package then needs no
``seqctr`` to run). They need ``T > k``; shorter windows, an empty history or another cache form run eagerly.
An AOTInductor package runs only under the torch version that compiled it: under another, the scorer runs eagerly.
Speed: docs/results/export_scoring.md.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..errors import SeqctrError
from .cache import KVCache
from .runtime import fingerprint, prefill, probabilities, request_time

FILE = "scoring.pt2"


class ScoringGraph(torch.nn.Module):
    """``forward(candidates [N, Fi], history_len [1], tensors, time [1] | None) -> [N]``: cached scoring
    with the cache given as its tensors in ``names`` order (the graph :func:`capture` traces)."""

    def __init__(self, model, names: list[str], meta: dict):
        super().__init__()
        self.model, self.names, self.meta = model, list(names), dict(meta)

    def forward(self, candidates, history_len, tensors, time=None):
        cache = KVCache(dict(zip(self.names, tensors)), history_len, "", self.meta)
        return probabilities(self.model, cache, candidates, time)


@contextlib.contextmanager
def _quiet_torch():
    """torch's own log lines while tracing (a refused trace prints the whole graph as warnings) held back:
    the refusal is reported once, as a :class:`SeqctrError` naming the backbone and the reason."""
    import io

    loggers = [logging.getLogger(n) for n in ("torch", "torch.fx.experimental.symbolic_shapes", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def min_window(model) -> int:
    """The shortest window a captured graph takes: one more than the largest ``k`` of a top-k selection in
    ``model`` (the graph selects ``k`` of more than ``k`` events; up to ``k`` all are attended), else 1."""
    ks = [m.topk + 1 for m in model.modules() if isinstance(getattr(m, "topk", None), int)]
    return max([1] + ks)


def _example_cache(scorer, T: int, g: torch.Generator) -> KVCache:
    """A cache of ``T`` random catalogue items, in the form the scorer stores and reads back."""
    rows = scorer.items[torch.randint(2, len(scorer.items), (T,), generator=g)]
    times = list(range(T)) if scorer.uses_time else None
    cache = prefill(scorer.model, scorer.user_row("export-example"), rows, max_len=scorer.max_len, hist_time=times)
    cache = scorer.codec.decode(scorer.codec.encode(cache))
    return KVCache(_contiguous(cache), cache.history_len, cache.model_version, cache.meta)


def _contiguous(cache: KVCache) -> dict:
    """The cache's tensors, each contiguous: a compiled graph reads its inputs with the strides it was
    captured with (a contiguous layout) and does not check them, so every input is made contiguous
    (a no-op for one that is; a prefilled fp32 cache's K/V are strided views of a wider projection)."""
    return {n: t.contiguous() for n, t in cache.tensors.items()}


def signature(cache: KVCache) -> dict:
    """Name -> (dtype, rank) of a cache's tensors: what a captured graph takes."""
    return {n: [str(t.dtype).removeprefix("torch."), t.dim()] for n, t in sorted(cache.tensors.items())}


def capture(scorer, max_candidates: int = 1000, select: str = "op") -> tuple[torch.export.ExportedProgram, dict]:
    """``(program, spec)``: the scorer's cached scoring traced with the candidate count in
    ``[1, max_candidates]`` and the window in ``[min_window, max_len]`` dynamic, selections in the form
    ``select`` (``op`` | ``dense``, :func:`seqctr.ops.select.traced_form`). ``spec`` records the
    input names, their dynamic dimension, the ranges, the cache signature, the selection form and the serving form."""
    from torch.export import Dim, export

    from ..ops.select import traced_form

    model = scorer.model
    lo, hi = min_window(model), scorer.max_len
    if hi <= lo:
        raise SeqctrError(f"export --compile: the window ({hi} events) must be longer than the {lo} events the "
                          "model selects")
    g = torch.Generator().manual_seed(0)
    a, b = _example_cache(scorer, hi, g), _example_cache(scorer, max(lo, hi // 2), g)
    names = sorted(a.tensors)
    dims = {}
    for n in names:
        diff = [i for i, (x, y) in enumerate(zip(a.tensors[n].shape, b.tensors[n].shape)) if x != y]
        if len(diff) > 1 or (diff and a.tensors[n].shape[diff[0]] != hi):
            raise SeqctrError(f"export --compile: cache tensor {n!r} does not grow with the window alone "
                              f"({list(a.tensors[n].shape)} vs {list(b.tensors[n].shape)})")
        if diff:
            dims[n] = diff[0]
    N, T = Dim("candidates", min=1, max=max_candidates), Dim("window", min=lo, max=hi)
    cands = scorer.items[torch.randint(2, len(scorer.items), (max(2, min(64, max_candidates)),), generator=g)]
    args = [cands, torch.tensor([hi]), tuple(a.tensors[n] for n in names)]
    shapes = [{0: N}, None, tuple({dims[n]: T} if n in dims else None for n in names)]
    time = request_time(a)
    if time is not None:
        args.append(time)
        shapes.append(None)
    graph = ScoringGraph(model, names, a.meta).eval()
    try:
        with torch.no_grad(), _quiet_torch(), traced_form(select):
            program = export(graph, tuple(args), dynamic_shapes=tuple(shapes), strict=False)
    except Exception as e:   # what torch.export refuses: data-dependent control flow, unsupported ops
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SeqctrError(f"export --compile: the {model.backbone.registry_name} backbone's cached scoring cannot "
                          f"be captured as a graph ({type(e).__name__}: {first[:300]}); serve it eagerly") from None
    spec = {"file": FILE, "inputs": names, "window_dims": dims, "min_window": lo, "max_window": hi,
            "max_candidates": int(max_candidates), "signature": signature(a), "meta": a.meta,
            "time": time is not None, "select": select, "torch": torch.__version__, "fingerprint": fingerprint(model),
            "form": {"cache_codec": scorer.codec.name, "rebuild_first_layer": not getattr(
                model.backbone, "cache_first_layer", True)}}
    return program, spec


def compiler() -> str | None:
    """The C++ compiler AOTInductor would call (``$CXX``, else ``g++``), or None when there is none on PATH."""
    import os

    return shutil.which(os.environ.get("CXX") or "g++")


def compile_program(program: torch.export.ExportedProgram, spec: dict, folder: str | Path) -> "CompiledScoring":
    """Compile a :func:`capture` ``program`` with AOTInductor into ``folder`` (``spec["file"]``) and load it."""
    torch._inductor.aoti_compile_and_package(program, package_path=str(Path(folder) / spec["file"]))
    return CompiledScoring(folder, spec)


def compile_bundle(path: str | Path, max_candidates: int = 1000, select: str = "op") -> dict:
    """Capture the bundle's cached scoring in its recorded serving form, compile it with AOTInductor and
    write it into the bundle (``scoring.pt2``, ``serving.compiled`` in ``bundle.json``): the bundle is
    replaced atomically, only once the compiled graph is written. Returns the recorded spec."""
    from .bundle import add_files, load_bundle
    from .scorer import Scorer

    path = Path(path)
    if not compiler():
        raise SeqctrError("export --compile: AOTInductor needs a C++ compiler (g++, or the one $CXX names) on PATH")
    scorer = Scorer(load_bundle(path), compiled=False)
    program, spec = capture(scorer, max_candidates, select)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.compile.") as work:
        spec["measured"] = measure(scorer, compile_program(program, spec, work), min(200, max_candidates))
        add_files(path, {FILE: Path(work) / FILE}, {"compiled": spec})
    return spec


def paired_times(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each of two callables ``runs = {name: fn}``, after one warm-up call each, in
    ``rounds`` rounds that call both, in alternating order (so a load change hits both alike)."""
    names = list(runs)
    times = {k: [] for k in names}
    for f in runs.values():
        f()
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def measure(scorer, fast: "CompiledScoring", candidates: int, rounds: int = 15) -> dict:
    """Eager against compiled scoring of one user at the full window, paired rounds on this machine:
    ``{"events", "candidates", "eager_ms", "compiled_ms", "speedup"}`` (medians; ``speedup``: eager / compiled).
    Recorded at compile time; the scorer uses the graph by default only where it measured faster."""
    import statistics

    from .runtime import score

    g = torch.Generator().manual_seed(1)
    cache = _example_cache(scorer, scorer.max_len, g)
    cands = scorer.items[torch.randint(2, len(scorer.items), (candidates,), generator=g)]
    with torch.no_grad():
        times = paired_times({"eager": lambda: score(scorer.model, cache, cands),
                              "compiled": lambda: fast(cache, cands)}, rounds)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"events": scorer.max_len, "candidates": candidates, "eager_ms": round(ms["eager"], 3),
            "compiled_ms": round(ms["compiled"], 3), "speedup": round(ms["eager"] / ms["compiled"], 3)}


class CompiledScoring:
    """A bundle's compiled scoring (``serving.compiled``): ``__call__(cache, candidates, time)`` gives the
    probabilities ``[N]``, or None when this request is outside what was captured (its window or
    candidate count out of range, another cache signature) — the caller then scores eagerly."""

    def __init__(self, path: str | Path, spec: dict):
        self.spec = spec
        self.names = spec["inputs"]
        self.runner = torch._inductor.aoti_load_package(str(Path(path) / spec["file"]))

    @classmethod
    def of(cls, bundle, form: dict, when: str = "auto") -> "CompiledScoring | None":
        """The bundle's compiled scoring if it has one made for ``form`` (the serving form), these weights
        and this torch version, and ``when`` is ``always``, or ``auto`` and it measured faster than eager when
        it was compiled (:func:`measure`); else None (the scorer runs eagerly)."""
        spec = bundle.serving.get("compiled")
        if when == "never" or not spec or spec.get("torch") != torch.__version__ \
                or spec.get("fingerprint") != bundle.fingerprint:
            return None
        if spec.get("form") != {k: form[k] for k in ("cache_codec", "rebuild_first_layer")}:
            return None
        if when == "auto" and spec.get("measured", {}).get("speedup", 0) < 1:
            return None
        return cls(bundle.path, spec)

    def accepts(self, cache: KVCache, candidates: torch.Tensor) -> bool:
        s = self.spec
        return (1 <= candidates.shape[0] <= s["max_candidates"] and signature(cache) == s["signature"]
                and cache.meta.get("max_len") == s["meta"].get("max_len")
                and all(s["min_window"] <= cache.tensors[n].shape[d] <= s["max_window"]
                        for n, d in s["window_dims"].items()))

    def __call__(self, cache: KVCache, candidates: torch.Tensor, time=None) -> torch.Tensor | None:
        if not self.accepts(cache, candidates):
            return None
        tensors = _contiguous(cache)
        args = [candidates.contiguous(), torch.tensor([int(cache.history_len)]), tuple(tensors[n] for n in self.names)]
        if self.spec["time"]:
            args.append(request_time(cache, time))
        with torch.no_grad():
            return self.runner(*args)


__all__ = ["FILE", "ScoringGraph", "CompiledScoring", "capture", "compile_bundle", "compile_program", "compiler",
           "measure", "min_window", "paired_times", "signature"]
