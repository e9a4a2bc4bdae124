"""Every experiment suite, registered once: its command-line options, how it runs, and its report pages.

``seqctr experiment NAME`` and ``seqctr report`` both read :data:`SUITES`, so a suite added here has
its sub-command, its handler and its place in the report at once. A suite's ``run`` gets the parsed
arguments and the options every suite shares (``out``, ``config_dir``, ``sets``, ``jobs``, ``threads``);
the suite modules are imported when a suite runs, not when the parser is built.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from ..errors import SeqctrError


def comma_list(kind=float):
    """argparse type: ``1,50,100`` -> ``[1.0, 50.0, 100.0]`` (the one list style of every option)."""
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")

    parse.__name__ = f"comma-separated {kind.__name__} list"
    return parse


@dataclass(frozen=True)
class Suite:
    """``name``: the sub-command; ``help``; ``title``: its heading in the report; ``backbones``: the default
    (one name when ``one``: a one-backbone suite, ``--backbone``); ``options``: adds the suite's own
    arguments; ``run(args, common)``; ``pages``: (file, title) of each page it writes under ``out/name``."""

    name: str
    help: str
    title: str
    backbones: str
    run: Callable
    options: Callable[[argparse.ArgumentParser], None] = lambda p: None
    one: bool = False
    pages: tuple = ()

    def report_pages(self) -> list[tuple[str, str, str]]:
        return [(self.name, f, t) for f, t in (self.pages or (("results.md", self.title),))]


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def one_backbone(args) -> str:
    """The backbone of a one-backbone suite: ``--backbone``, or ``--backbones`` naming exactly one."""
    if getattr(args, "backbone", None):
        return args.backbone
    if len(args.backbones) != 1:
        raise SeqctrError(f"experiment {args.kind} runs one backbone: give --backbone NAME (got --backbones "
                          f"{','.join(args.backbones)})")
    return args.backbones[0]


# ----------------------------------------------------------------------------------- LAIN
def _compare(args, common):
    from . import lain_suite

    lain_suite.compare(args.backbones, args.seeds, **common)


def _maxlen_options(p):
    p.add_argument("--lengths", type=comma_list(int), default="50,100,200,500", help="the max_len values")
    p.add_argument("--no-lain", action="store_true", help="bare backbones only")


def _maxlen(args, common):
    from . import lain_suite

    lain_suite.maxlen(args.backbones, args.lengths, args.seeds, with_lain=not args.no_lain, **common)


def _ablation_options(p):
    p.add_argument("--rows", type=comma_list(str), default=None,
                   help="which rows: bare, full, no_lcp, no_qk_condition, no_temperature, no_lma, no_short_branch "
                        "(default: these), and the open choices l0_users, l0_samples, prompt_small (vs full)")


def _ablation(args, common):
    from . import lain_suite

    lain_suite.ablation(one_backbone(args), args.seeds, rows=args.rows, **common)


def _sensitivity(args, common):
    from . import lain_suite

    lain_suite.sensitivity(one_backbone(args), args.seeds, **common)


def _paper_options(p):
    p.add_argument("--dataset", required=True, choices=["microvideo", "kuaivideo", "ebnerd"],
                   help="which of the paper's datasets SOURCE is (MicroVideo1.7M_x2, KuaiVideo_x2, EBNeRD_small_x1)")
    p.add_argument("--source", required=True, help="the dataset's LongCTR folder")
    p.add_argument("--lengths", type=comma_list(int), default="200,500,1000", help="max_len values of Table 5")


def _paper(args, common):
    from .paper import reproduce

    common = {k: v for k, v in common.items() if k != "config_dir"}
    reproduce(args.dataset, args.source, args.seeds, backbones=args.backbones, lengths=args.lengths, **common)


# ----------------------------------------------------------------------------------- backbones
def _backbones_options(p):
    p.add_argument("--baseline", help="the backbone the others are compared with (default: the first)")


def _backbones(args, common):
    from . import backbone_suite

    backbone_suite.backbones(args.backbones, args.seeds, baseline=args.baseline, **common)


def _ab_options(p):
    p.add_argument("--b", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the B side (repeatable), e.g. train.precision=bf16")


def _ab(args, common):
    from . import backbone_suite

    backbone_suite.ab(args.backbones, args.seeds, b_sets=args.b, **common)


# ----------------------------------------------------------------------------------- CollectiveKV
def _kv_options(p):
    p.add_argument("--variants", type=comma_list(str), default="base,silu,ck,cv,ckv", help="which of base,silu,ck,cv,ckv")
    p.add_argument("--sweep-backbone", default="twin", help="backbone for the d_u and pool-size sweeps ('' = none)")
    p.add_argument("--user-dims", type=comma_list(int), default="1,2,4,8", help="d_u sweep")
    p.add_argument("--pool-sizes", type=comma_list(int), default="100,1000,10000", help="pool-size sweep")


def _kv(args, common):
    from . import kv_suite

    unknown = set(args.variants) - set(kv_suite.VARIANTS)
    if unknown:
        raise SeqctrError(f"--variants: unknown {sorted(unknown)}; known: {list(kv_suite.VARIANTS)}")
    kv_suite.kv(args.backbones, args.seeds, variants=args.variants, sweep_backbone=args.sweep_backbone,
                user_dims=args.user_dims, pool_sizes=args.pool_sizes, **common)


# ----------------------------------------------------------------------------------- cache codecs
def _compression_options(p):
    p.add_argument("--codecs", type=comma_list(str), default="fp32,bf16,int8",
                   help="cache codecs through the serving path (the first is the baseline); CODEC@K: that codec "
                        "on a cache of the most recent K events (recent-window truncation, seqctr serve --window K)")
    p.add_argument("--collective", default=None, metavar="JSON",
                   help='CollectiveKV options of the ckv variant (default {"user_dim": 1, "pool_size": 10000, '
                        '"branches": ["short", "long"]})')


def _compression(args, common):
    import json

    from .compression import compression

    try:
        collective = json.loads(args.collective) if args.collective else None
    except ValueError as e:
        raise SeqctrError(f"--collective: not JSON ({e})") from None
    compression(args.backbones, args.seeds, codecs=args.codecs, collective=collective, **common)


# ----------------------------------------------------------------------------------- staleness
def _streaming_options(p):
    p.add_argument("--slices", type=int, default=4, help="time slices of equal sample counts (default 4)")
    p.add_argument("--cuts", type=comma_list(int), default=None,
                   help="the slices' boundaries as times in the data's units instead (e.g. day starts)")


def _streaming(args, common):
    from .streaming import streaming

    streaming(one_backbone(args), args.seeds, slices=args.slices, cuts=args.cuts, **common)


# in reading order (the report's order)
register(Suite("compare", "LAIN vs bare backbones per length bucket", "LAIN vs bare backbones",
               "din,dien,sim,sdim,twin", _compare))
register(Suite("maxlen", "max_len sweep, bare and +LAIN: per-bucket AUC and attention Gini", "max_len sweep",
               "din,twin", _maxlen, _maxlen_options))
register(Suite("ablation", "LAIN component ablation (paper Table 6)", "LAIN ablation", "twin", _ablation,
               _ablation_options, one=True))
register(Suite("sensitivity", "LAIN sensitivity grid: d_f x hidden x prompts (paper Fig. 4)", "LAIN sensitivity",
               "twin", _sensitivity, one=True))
register(Suite("paper", "the LAIN paper's Tables 3-6 on your copy of its data (a LongCTR folder), its numbers beside "
               "ours", "The LAIN paper's tables", "din,dien,sim,sdim,twin", _paper, _paper_options))
register(Suite("backbones", "bare backbones against a baseline backbone per length bucket (e.g. HSTU vs DIN)",
               "Backbones against each other", "din,hstu", _backbones, _backbones_options))
register(Suite("ab", "A/B of a setting per backbone: as configured vs with --b overrides (e.g. a speed lever's "
               "accuracy)", "A/B of a setting", "din,twin", _ab, _ab_options))
register(Suite("kv", "CollectiveKV variants vs the uncompressed model, cache bytes, d_u and pool sweeps",
               "CollectiveKV vs uncompressed K/V", "sim,eta,sdim,twin,hstu", _kv, _kv_options,
               pages=(("results.md", "CollectiveKV vs uncompressed K/V"), ("kv.md", "K/V SVD diagnostic"))))
register(Suite("compression", "bytes per user against AUC: every cache codec on the full and the CollectiveKV cache, "
               "the test split scored through the serving path", "Per-user state frontier (cache codecs)", "twin",
               _compression, _compression_options))
register(Suite("streaming", "staleness over time slices: a model frozen after the first slice, warm-started on each "
               "slice (vocabularies grown), retrained from scratch on all slices so far", "Staleness over time slices",
               "din", _streaming, _streaming_options, one=True))


def report_pages() -> list[tuple[str, str, str]]:
    """``(folder, file, title)`` of every page ``seqctr report`` can include, in reading order: the data
    page, then each suite's."""
    return [("data", "data.md", "Length buckets of the data")] + [p for s in SUITES.values() for p in s.report_pages()]
