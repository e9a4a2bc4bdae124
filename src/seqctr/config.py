"""Typed run configuration (dataclasses) loaded from YAML, with ``--set a.b=value`` overrides.

A leaf of the package (it imports no model, data or plug-in code). A run is described by one
:class:`RunConfig` with four parts: ``data`` (which dataset and how
batches are cut), ``model`` (backbone name + its options), ``train`` (optimiser, early stopping)
and ``eval`` (length buckets). Unknown keys are errors, so a typo never silently does nothing.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, check_keys
from .metrics.core import DEFAULT_BUCKETS, PAPER_GROUPS


@dataclass
class SplitRule:
    """How samples are split: per user, chronologically, for one-sample-per-event sources (EB-NeRD:
    by time over impressions; LongCTR: the splits as given)."""

    valid_frac: float = 0.1      # share of each user's samples for validation (at least one)
    test_frac: float = 0.1       # share of each user's samples for test (the latest; at least one)
    min_history: int = 1         # events before a user's first sample (1 drops the empty-history event)
    # a split by time instead (one global cut, for time slices: ``seqctr experiment streaming``), in the
    # source's time units: train = samples in [train_from, train_until) (its latest valid_frac by time ->
    # valid), test = [train_until, test_until); other samples are kept as history only (split 3)
    train_from: int | None = None
    train_until: int | None = None
    test_until: int | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitRule":
        d = dict(d or {})
        check_keys(d, [f.name for f in dataclasses.fields(cls)], "data.split")
        rule = cls(**d)
        if not (0 <= rule.valid_frac < 1 and 0 <= rule.test_frac < 1) or rule.min_history < 0:
            raise ConfigError(f"data.split: fractions must be in [0, 1) and min_history >= 0, got {d}")
        if rule.train_until is None and (rule.train_from is not None or rule.test_until is not None):
            raise ConfigError(f"data.split: train_from / test_until need train_until (a split by time), got {d}")
        times = [t for t in (rule.train_from, rule.train_until, rule.test_until) if t is not None]
        if any(not isinstance(t, int) or isinstance(t, bool) for t in times) or times != sorted(times) \
                or len(set(times)) != len(times):
            raise ConfigError(f"data.split: train_from < train_until < test_until must be integer times, got {d}")
        return rule

    @property
    def by_time(self) -> bool:
        return self.train_until is not None

    def key(self) -> dict:
        """The rule as it enters a prepared dataset's cache key (unset time bounds left out, so
        the per-user rule keeps its key)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


BRANCHES = ("short", "long")


@dataclass
class LainConfig:
    """``model.lain`` in a config. Every row of the paper's ablation (Table 6) is one setting:
    w/o LCP = ``prompts: 0``; w/o QK conditioning = ``qk_condition: false``; w/o temperature =
    ``temperature: false``; w/o LMA = both false; w/o short branch = ``branches: [long]``."""

    enabled: bool = False        # switch the plug-in on
    prompts: int = 4             # length-conditioned prompt tokens per branch (0 = none)
    qk_condition: bool = True    # add e_len to query and keys of the attention layers
    temperature: bool = True     # length-dependent softmax temperature tau = 1 + sigmoid(-beta (L - L0)) gamma
    branches: list = field(default_factory=lambda: list(BRANCHES))   # which branches: short, long
    fourier_dim: int = 32        # Spectral Length Encoder: Fourier features of the length
    hidden: int = 512            # Spectral Length Encoder: hidden width
    cond_dim: int = 16           # width of e_len
    gamma: float = 0.5           # temperature range
    beta: float = 0.01           # temperature slope
    prompt_scale: float = 1.0    # learnable scale on the prompt tokens, initialised here (1 = the paper's plain MLP output)
    l0: str | float = "users"    # L0: users (mean over users, the paper's "dataset mean"; better where the two differ) | samples (mean over training samples) | a number

    @classmethod
    def from_dict(cls, d: dict | None) -> "LainConfig":
        d = dict(d or {})
        check_keys(d, {f.name for f in dataclasses.fields(cls)}, "model.lain")
        cfg = cls(**d)
        bad = set(cfg.branches) - set(BRANCHES)
        if bad or not cfg.branches:
            raise ConfigError(f"model.lain.branches: use a non-empty subset of {list(BRANCHES)}, got {cfg.branches}")
        if cfg.prompts < 0 or cfg.fourier_dim < 1 or cfg.hidden < 1 or cfg.cond_dim < 1:
            raise ConfigError(f"model.lain: prompts >= 0 and positive sizes required, got {d}")
        if not (cfg.l0 in ("samples", "users") or (isinstance(cfg.l0, (int, float)) and not isinstance(cfg.l0, bool)
                                                    and cfg.l0 > 0)):
            raise ConfigError(f"model.lain.l0: expected samples, users or a positive number, got {cfg.l0!r}")
        return cfg

    def resolve_l0(self, meta) -> float:
        """The L0 this config asks for, from a prepared dataset's :class:`~seqctr.data.DatasetMeta`."""
        if not isinstance(self.l0, str):
            return float(self.l0)
        key = {"samples": "mean_train_len", "users": "mean_user_len"}[self.l0]
        if getattr(meta, key, None) is None:
            raise ConfigError(f"model.lain.l0={self.l0}: the dataset was prepared before seqctr recorded {key}; "
                              "prepare it again (--force) or give l0 as a number")
        return float(getattr(meta, key))


@dataclass
class DataConfig:
    """Which dataset, and how its samples become batches.

    ``source``: ``ml100k`` / ``ml-latest-small`` (built in), a GroupLens ``ml-100k`` folder, a
    LongCTR or EB-NeRD folder, or an interactions table (parquet / CSV) described by ``columns``
    (+ optional ``items`` / ``users`` side tables). ``max_len`` keeps the most recent events only.
    """

    source: str = "ml100k"           # ml100k | ml-latest-small | a folder (GroupLens, LongCTR, EB-NeRD) | a table
    max_len: int = 200               # most recent events a model sees (the true length still reaches LAIN)
    batch_size: int = 256            # training samples per step
    eval_batch_size: int = 256       # samples per evaluation batch (256: 2-2.5x faster on CPU than 1024, same numbers)
    bucket_sampler: bool = True      # length-bucketed shuffled batches for training
    bucket_chunk: int = 64           # batches per sorted chunk in the bucketed sampler
    columns: dict = field(default_factory=dict)   # generic table: role -> column (user, item, timestamp, category, item_features, user_features, names)
    label: dict = field(default_factory=dict)     # generic table: {column, threshold} or {column, positive: [values]}
    split: dict = field(default_factory=dict)     # split rule: valid_frac, test_frac, min_history
    items: dict = field(default_factory=dict)     # generic table: item side table {path, key, features, multi}
    users: dict = field(default_factory=dict)     # generic table: user side table {path, key, features, multi}


@dataclass
class ModelConfig:
    """Backbone and head. ``options`` are passed to the backbone's constructor."""

    name: str = "din"                # backbone: din | dien | sim | eta | sdim | twin | hstu
    embedding_dim: int = 64          # width of every feature's embedding
    mlp_hidden: list = field(default_factory=lambda: [512, 128, 64])   # hidden widths of the prediction MLP
    dropout: float = 0.2             # dropout in the prediction MLP
    options: dict = field(default_factory=dict)   # the backbone's own options (see "Backbone options")
    lain: dict = field(default_factory=dict)      # the LAIN plug-in (see "model.lain")
    impl: str = "fast"               # target-attention ops: fast | reference | dense | distinct | sparse (seqctr.ops; equal outputs within float rounding)


@dataclass
class TrainConfig:
    """The optimiser and early stopping (one training loop for every model)."""

    epochs: int = 10                 # at most this many epochs
    lr: float = 1e-3                 # Adam learning rate
    weight_decay: float = 0.0        # Adam weight decay
    patience: int = 2                # stop after this many epochs without a better validation AUC
    lr_decay: float = 0.1            # multiply the LR by this on an epoch without improvement (1 = off)
    min_lr: float = 1e-6             # the LR never decays below this
    seed: int = 2024                 # seeds weights, shuffling and dropout
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch threads; 0 = torch default (all cores)
    max_steps: int = 0               # 0 = no limit; else stop an epoch after this many steps
    checkpoint_steps: int = 0        # also save last.pt every this many steps inside an epoch (0 = at epoch ends only): --resume then continues from the step after it, as an uninterrupted run would (same batches, random streams, weights)
    max_grad_norm: float = 10.0      # gradient clipping by global norm
    tensorboard: bool = False        # also log to <run>/tensorboard (needs the tensorboard extra)
    precision: str = "fp32"          # fp32 | bf16 (bfloat16 autocast of matrix products: faster, less accurate; see docs/results/precision_bf16_ml100k.md)
    compile: bool = False            # torch.compile (inductor) the training and evaluation forward: faster steps after tens of seconds of compilation; equal to eager within float rounding; not under DDP
    init: str = ""                   # warm start: a run's best.pt or a model bundle; its weights start this run, its vocabularies are extended by the data's new ids (every old id keeps its row)
    init_rows: str = "oov"           # a new id's first embedding row: oov (a copy of the trained out-of-vocabulary row: scores as the old model scored the unknown id) | fresh (the model's random init)
    init_l0: str = "keep"            # LAIN's L0 on a warm start: keep (the trained model's) | data (from this data, by model.lain.l0)


@dataclass
class EvalConfig:
    """How results are reported."""

    buckets: list = field(default_factory=lambda: list(DEFAULT_BUCKETS))   # history-length bucket edges
    groups: list = field(default_factory=lambda: list(PAPER_GROUPS))   # a second set reported beside them
    save_predictions: bool = True    # test predictions -> predictions_test.npz (for paired bootstraps)
    polarization: bool = False       # attention Gini / entropy per bucket on test -> attention.json


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    check_keys(values, {f.name for f in dataclasses.fields(cls)}, where or "config")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        typ = hints[key]
        sub = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, val or {}, sub)
        else:
            kwargs[key] = _coerce(typ, val, sub)
    return cls(**kwargs)


def _coerce(typ, val, where):
    if typ is float and isinstance(val, int) and not isinstance(val, bool):
        return float(val)
    if typ in (int, float, str, bool) and not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {val!r}")
    if typ is list and not isinstance(val, list):
        raise ConfigError(f"{where}: expected a list, got {val!r}")
    if typ is dict and not isinstance(val, dict):
        raise ConfigError(f"{where}: expected a mapping, got {val!r}")
    return val


def config_from_dict(values: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig`: types, ranges and the nested ``options`` / ``lain``
    / ``split`` / ``label`` blocks are checked here, before any data is read."""
    cfg = _build(RunConfig, values, "")
    validate(cfg)
    return cfg


def _check(ok: bool, where: str, want: str, got) -> None:
    if not ok:
        raise ConfigError(f"{where}: expected {want}, got {got!r}")


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def validate(cfg: RunConfig) -> None:
    """Every value in range, every nested block known; one :class:`ConfigError` naming the key. The
    backbone's name and options are checked against the registry by
    :func:`seqctr.models.check_model_config` (the config module imports no model)."""
    d, m, t, e = cfg.data, cfg.model, cfg.train, cfg.eval
    for key in ("max_len", "batch_size", "eval_batch_size", "bucket_chunk"):
        _check(_pos_int(getattr(d, key)), f"data.{key}", "an integer >= 1", getattr(d, key))
    _check(_pos_int(m.embedding_dim), "model.embedding_dim", "an integer >= 1", m.embedding_dim)
    _check(all(_pos_int(h) for h in m.mlp_hidden), "model.mlp_hidden", "a list of integers >= 1", m.mlp_hidden)
    _check(0 <= m.dropout < 1, "model.dropout", "a number in [0, 1)", m.dropout)
    _check(t.epochs >= 1, "train.epochs", "an integer >= 1", t.epochs)
    _check(t.lr > 0, "train.lr", "a number > 0", t.lr)
    _check(t.weight_decay >= 0, "train.weight_decay", "a number >= 0", t.weight_decay)
    _check(t.patience >= 0, "train.patience", "an integer >= 0", t.patience)
    _check(0 < t.lr_decay <= 1, "train.lr_decay", "a number in (0, 1]", t.lr_decay)
    _check(t.min_lr >= 0, "train.min_lr", "a number >= 0", t.min_lr)
    _check(t.threads >= 0, "train.threads", "an integer >= 0 (0 = torch default)", t.threads)
    _check(t.max_steps >= 0, "train.max_steps", "an integer >= 0 (0 = no limit)", t.max_steps)
    _check(t.checkpoint_steps >= 0, "train.checkpoint_steps", "an integer >= 0 (0 = at epoch ends only)",
           t.checkpoint_steps)
    _check(t.max_grad_norm > 0, "train.max_grad_norm", "a number > 0", t.max_grad_norm)
    check_device(t.device, "train.device")
    _check(t.init_rows in ("oov", "fresh"), "train.init_rows", "oov or fresh", t.init_rows)
    _check(t.init_l0 in ("keep", "data"), "train.init_l0", "keep or data", t.init_l0)
    b = e.buckets
    _check(len(b) >= 1 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
           and all(x < y for x, y in zip(b, b[1:])), "eval.buckets", "increasing numbers, e.g. [1, 50, 100, 200]", b)
    SplitRule.from_dict(d.split)
    for key, val in d.label.items():
        _check(key in ("column", "threshold", "positive"), f"data.label.{key}", "one of column, threshold, positive",
               key)
    _check(isinstance(m.name, str) and m.name != "", "model.name", "a backbone name", m.name)
    LainConfig.from_dict(m.lain)


def check_device(name: str, where: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    import re

    _check(isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None, where,
           "auto, cpu, cuda or cuda:N", name)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
        node = values
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return values


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, _seen: tuple = ()) -> dict:
    """Read a YAML config; ``extends: other.yaml`` (relative to this file, else a packaged config
    name such as ``ml100k/din``) merges this file over it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path}: 'extends' loops back on itself")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    _absolute_paths(values, path.parent)
    base = values.pop("extends", None)
    if base is not None:
        local = path.parent / str(base)
        values = _merge(read_yaml(local if local.is_file() else resolve_config(base), _seen + (path.resolve(),)), values)
    return values


PACKAGED = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with seqctr (``ml100k/din``, ``mlls/twin_1000``, ...)."""
    return sorted(f"{p.parent.name}/{p.stem}" for p in PACKAGED.glob("*/*.yaml") if p.stem != "base")


def resolve_config(name: str | Path) -> Path:
    """A config file path, or a packaged config name: ``din`` (= ``ml100k/din``), ``mlls/twin``,
    with or without ``.yaml``. Works from any directory."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    stem = str(name).removesuffix(".yaml")
    for cand in (PACKAGED / f"{stem}.yaml", PACKAGED / "ml100k" / f"{stem}.yaml"):
        if cand.is_file():
            return cand
    raise ConfigError(f"config {name!r} is neither a file nor a packaged config; packaged: "
                      f"{', '.join(packaged_configs())}")


def resolve_config_dir(name: str | Path) -> Path:
    """A folder of ``<backbone>.yaml`` configs, or a packaged set: ``ml100k``, ``mlls``."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if (PACKAGED / str(name)).is_dir():
        return PACKAGED / str(name)
    raise ConfigError(f"config folder {name!r} does not exist; packaged sets: "
                      f"{', '.join(sorted(d.name for d in PACKAGED.iterdir() if d.is_dir()))}")


BUILTIN_SOURCES = ("ml100k", "ml-latest-small", "mlls")


def _absolute_paths(values: dict, base: Path) -> None:
    """Data paths (``data.source``, ``data.items.path``, ``data.users.path``) that are relative and
    name something under ``base`` become absolute, in place: a config's paths are read against the
    config's own folder (else the working directory), and a run stores them absolute, so its folder
    can move and be evaluated or exported from anywhere."""
    data = values.get("data")
    if not isinstance(data, dict):
        return
    slots = [(data, "source")] + [(data[k], "path") for k in ("items", "users") if isinstance(data.get(k), dict)]
    for holder, key in slots:
        v = holder.get(key)
        if not isinstance(v, str) or v in BUILTIN_SOURCES:
            continue
        p = Path(v).expanduser()
        if not p.is_absolute() and (base / p).exists():
            holder[key] = str((base / p).resolve())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (a path or a packaged name; defaults when ``path`` is None) and apply
    ``--set`` overrides. Relative data paths are read against the YAML's folder, then the working
    directory, and kept absolute (:func:`_absolute_paths`)."""
    values: dict[str, Any] = read_yaml(resolve_config(path)) if path is not None else {}
    apply_overrides(values, overrides or [])
    _absolute_paths(values, Path.cwd())
    return config_from_dict(values)
