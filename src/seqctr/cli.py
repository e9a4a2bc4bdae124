"""seqctr: length-aware CTR prediction from behaviour sequences -- prepare data, train, evaluate, analyse, export.

Grammar: ``seqctr COMMAND [SOURCE] [options]``. Commands that read a dataset take it as the
positional SOURCE with the shared data options; commands that read a model take ``--checkpoint``
(``--source`` then overrides its dataset). Lists are comma-separated (``--buckets 1,50,100,200``).
Bad input ends with one line ``seqctr: error: ...`` naming the file, column and row (exit 2);
``--debug`` (anywhere on the line) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .experiments.suites import comma_list
from .errors import SeqctrError
from .utils.io import dumps
from .utils.malloc import keep_freed_memory


def _columns_arg(text: str | None) -> dict:
    """``user=uid,item=iid,timestamp=ts,category=cat,user_features=age+gender`` -> dict."""
    out: dict = {}
    for part in filter(None, (text or "").split(",")):
        if "=" not in part:
            raise SeqctrError(f"--columns: expected role=column, got {part!r}")
        role, col = part.split("=", 1)
        out[role.strip()] = col.strip().split("+") if role.strip() in ("user_features", "item_features", "names") else col.strip()
    return out


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def byte_size(text: str) -> int:
    """argparse type: ``500MB``, ``1.5GiB``, ``268435456`` -> bytes (decimal kB/MB/GB, binary KiB/MiB/GiB)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 268435456, 500MB or 2GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _multi_arg(text: str | None) -> dict:
    """``genres,tags=;`` -> ``{genres: "|", tags: ";"}`` (default separator ``|``)."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, _, sep = part.partition("=")
        out[name.strip()] = sep or "|"
    return out


def _side_arg(path, key, features, multi) -> dict:
    if not path:
        if key or features:
            raise SeqctrError("--item-key / --item-features / --user-key / --user-features need --items / --users")
        return {}
    spec = {"path": path}
    if key:
        spec["key"] = key
    if features:
        from .data.columns import feature_names

        spec["features"] = feature_names(features)
    if multi:
        spec["multi"] = multi
    return spec


def _data_rules(args, cfg_data=None) -> dict:
    """The data options of a command (over a config's ``data`` section) as ``prepare`` keywords:
    ``columns``, ``label``, ``split``, ``items``, ``users``."""
    columns = dict(getattr(cfg_data, "columns", {}) or {})
    label = dict(getattr(cfg_data, "label", {}) or {})
    split = dict(getattr(cfg_data, "split", {}) or {})
    columns.update(_columns_arg(getattr(args, "columns", None)))
    if getattr(args, "label_column", None):
        label["column"] = args.label_column
    if getattr(args, "threshold", None) is not None:
        label["threshold"] = args.threshold
    for key in ("valid_frac", "test_frac", "min_history", "train_from", "train_until", "test_until"):
        if getattr(args, key, None) is not None:
            split[key] = getattr(args, key)
    multi = _multi_arg(getattr(args, "multi_valued", None))
    user_feats = set((getattr(args, "user_features", None) or "").split(","))
    items = _side_arg(getattr(args, "items", None), getattr(args, "item_key", None),
                      getattr(args, "item_features", None),
                      {k: v for k, v in multi.items() if k not in user_feats}) or dict(getattr(cfg_data, "items", {}) or {})
    users = _side_arg(getattr(args, "users", None), getattr(args, "user_key", None),
                      getattr(args, "user_features", None),
                      {k: v for k, v in multi.items() if k in user_feats}) or dict(getattr(cfg_data, "users", {}) or {})
    return {"columns": columns, "label": label, "split": split, "items": items, "users": users}


def data_options() -> argparse.ArgumentParser:
    """The options that describe a data source, shared by every command that reads one."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data source options (interaction tables; the built-in, LongCTR and EB-NeRD "
                             "sources need none)")
    g.add_argument("--columns", help="role=column list: user=,item=,timestamp=,category=,item_features=a+b,"
                   "user_features=a+b, names=a+b+c (CSV without a header row)")
    g.add_argument("--label-column", help="0/1 label column, or a rating column with --threshold")
    g.add_argument("--threshold", type=float, help="label = value >= threshold")
    g.add_argument("--valid-frac", type=float, help="share of each user's samples for validation (default 0.1)")
    g.add_argument("--test-frac", type=float, help="share of each user's samples for test (default 0.1)")
    g.add_argument("--min-history", type=int, help="events before a user's first sample (default 1)")
    g.add_argument("--train-until", type=int, metavar="TIME", help="split by time instead: train on samples before "
                   "TIME (source units; its latest --valid-frac validate), test from TIME")
    g.add_argument("--train-from", type=int, metavar="TIME", help="with --train-until: train on samples from TIME on")
    g.add_argument("--test-until", type=int, metavar="TIME", help="with --train-until: test on samples before TIME")
    g.add_argument("--items", metavar="TABLE", help="item side table (parquet/CSV), one row per item")
    g.add_argument("--item-key", metavar="COL", help="its item id column (default: the item column's name)")
    g.add_argument("--item-features", metavar="A,B", help="its feature columns (default: all other columns)")
    g.add_argument("--users", metavar="TABLE", help="user side table (parquet/CSV), one row per user")
    g.add_argument("--user-key", metavar="COL", help="its user id column (default: the user column's name)")
    g.add_argument("--user-features", metavar="A,B", help="its feature columns (default: all other columns)")
    g.add_argument("--multi-valued", metavar="COL[=SEP],...",
                   help="side-table columns holding several values, e.g. genres='|' (default separator |); "
                   "mean-pooled by the model")
    return p


def cmd_prepare(args) -> int:
    from .data import prepare
    from .data.stats import split_summary

    ds, folder, cached = prepare(args.source, **_data_rules(args), force=args.force)
    summary = {"dataset": ds.meta.name, "protocol": ds.meta.protocol, "cache": str(folder),
               "cached": cached, **split_summary(ds, args.buckets)}
    if args.json:
        print(dumps(summary))
    else:
        print(f"{summary['dataset']} ({'from cache' if cached else 'prepared'}) -> {folder}")
        for s in ("train", "valid", "test"):
            b = ", ".join(f"{k}: {v:,}" for k, v in summary[s]["buckets"].items())
            print(f"  {s:5s} {summary[s]['rows']:>9,} rows  {summary[s]['users']:>7,} users  "
                  f"label rate {summary[s]['label_rate']:.3f}  buckets {b}")
    return 0


def _train(cfg, out: Path, resume: bool, progress) -> dict:
    """Prepare (or load) the data, train, report. Under torchrun every process runs this: rank 0
    prepares the data while the others wait, then all open the same memory-mapped cache; only
    rank 0 prints and writes."""
    from .data import prepare_config
    from .experiments import format_metrics_table, write_run_report
    from .training import Trainer
    from .training.distributed import init_distributed, shutdown

    d, _ = init_distributed(cfg.train.device)
    say = print if d.main else (lambda *a, **k: None)
    try:
        if not d.main:
            d.barrier()
        init = None
        if cfg.train.init:                  # warm start: the data in the trained model's grown id space
            from .training.warm_start import warm_data

            ds, folder, init = warm_data(cfg)
            cfg.data.source, cached = str(folder), True
        else:
            ds, folder, cached = prepare_config(cfg.data)
        if d.main:
            d.barrier()
        say(f"data: {ds.meta.name} {'(cached)' if cached else '(prepared)'} {folder}")
        trainer = Trainer(cfg, ds, out, progress=progress, init=init)
        if trainer.grown:
            say("warm start from " + cfg.train.init + ": " + ", ".join(
                f"{k.split('.')[-2]} {a:,} -> {b:,} rows" for k, (a, b) in trainer.grown.items()))
        say(f"model: {cfg.model.name}, {sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
            f"device {trainer.device}" + (f" x {d.world} processes" if d.active else "") +
            f"; padded slots per epoch {100 * trainer.train_loader.padding_fraction(1):.1f}%")
        result = trainer.fit(resume=resume, log=lambda msg: print(msg, flush=True))  # shown live in CI logs too
        if d.main:
            report = write_run_report(out, result)
            print()
            print(format_metrics_table(result["test"], f"{cfg.model.name} on {ds.meta.name}: test"))
            print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}\ncheckpoint: {out / 'best.pt'}")
        return result
    finally:
        shutdown(d)


def _launch(nproc: int, argv: list[str]) -> int:
    """``seqctr train --nproc N ...``: the same command under ``torchrun --standalone`` (one machine,
    N processes); for several machines call torchrun yourself (README)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "seqctr", *argv]
    return subprocess.run(cmd).returncode


def _run_config(path, overrides):
    """A run's config, every value checked (the backbone's name and options too) before any work."""
    from .config import load_config
    from .models import check_model_config

    cfg = load_config(path, overrides)
    check_model_config(cfg.model)
    return cfg


def cmd_train(args) -> int:
    cfg = _run_config(args.config, args.set)
    out = Path(args.out or f"runs/{cfg.data.source if '/' not in cfg.data.source else 'custom'}-{cfg.model.name}")
    if args.nproc > 1:
        argv = ["train", "--config", args.config, "--out", str(out)] + [a for kv in args.set for a in ("--set", kv)]
        argv += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress + ["--debug"] * args.debug
        return _launch(args.nproc, argv)
    _train(cfg, out, args.resume, None if not args.no_progress else False)
    return 0


def cmd_demo(args) -> int:
    cfg = _run_config(None, args.set)  # the defaults are DIN on ml100k with the benchmark settings
    _train(cfg, Path(args.out), args.resume, None if not args.no_progress else False)
    return 0


def cmd_evaluate(args) -> int:
    from .config import check_device
    from .data import BatchLoader
    from .experiments import format_metrics_table
    from .metrics import evaluate_predictions
    from .device import resolve_device
    from .models import load_trained
    from .training import predict

    check_device(args.device, "--device")
    device = resolve_device(args.device)
    model, cfg, ds, _ = load_trained(args.checkpoint, args.source, device)
    loader = BatchLoader(ds, args.split, max_len=cfg.data.max_len, batch_size=cfg.data.eval_batch_size,
                         shuffle=False)
    pred = predict(model, loader, device, precision=cfg.train.precision)
    if args.predictions:
        from .utils.io import write_predictions

        write_predictions(args.predictions, pred["index"], pred["prob"])
    m = evaluate_predictions(pred["label"], pred["prob"], pred["user"], pred["seq_len"], cfg.eval.buckets)
    if args.json:
        print(dumps(m))
    else:
        print(format_metrics_table(m, f"{cfg.model.name}: {args.split}"))
    return 0


def cmd_analyze_data(args) -> int:
    from .data import prepare
    from .experiments.data_analysis import analyze_dataset, format_data_table
    from .utils.io import write_json

    ds, _, _ = prepare(args.source, **_data_rules(args))
    a = analyze_dataset(ds, args.buckets)
    out = Path(args.out)
    write_json(out / "data.json", a)
    table = format_data_table(a)
    md = f"# Length buckets of {ds.meta.name}\n\n{a['n_users']:,} users, {a['n_samples']:,} samples.\n\n{table}\n"
    _plot_data(a, out / "data.png", f"{ds.meta.name}: users and samples by history length")
    if (out / "data.png").exists():
        md += "\n![users vs samples per bucket](data.png)\n"
    from .utils.io import write_text

    write_text(out / "data.md", md)
    if args.json:
        print(dumps(a))
    else:
        print(table)
        print(f"\nwritten: {out / 'data.json'}, {out / 'data.md'}")
    return 0


def _plot_data(a: dict, path: Path, title: str) -> None:
    from .utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return

    names = list(a["buckets"])
    us = [a["buckets"][b]["user_share"] for b in names]
    ss = [a["buckets"][b]["sample_share"] for b in names]
    import numpy as np

    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.2, us, 0.4, label="share of users (by their whole history)")
    ax.bar(x + 0.2, ss, 0.4, label="share of samples (by the history before each)")
    ax.set_xticks(x, [f"{b}\n{a['buckets'][b]['users']:,} users\n{a['buckets'][b]['samples']:,} samples"
                      for b in names], fontsize=7)
    ax.set_xlabel("history length (events)")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def cmd_analyze_kv(args) -> int:
    from .experiments.kv_analysis import analyze_kv
    from .models import load_trained

    model, cfg, ds, _ = load_trained(args.checkpoint)
    if not model.backbone.two_branch:
        raise SeqctrError(f"analyze kv needs a two-branch model (sim, eta, sdim, twin), got {cfg.model.name}")
    analyze_kv(model, ds, Path(args.out), users=args.users)
    print((Path(args.out) / ("kv.json" if args.json else "kv.md")).read_text().strip())
    return 0


def cmd_experiment(args) -> int:
    from .config import resolve_config_dir
    from .experiments.suites import SUITES

    common = dict(out=Path(args.out), config_dir=resolve_config_dir(args.config_dir), sets=args.set, jobs=args.jobs,
                  threads=args.threads)
    SUITES[args.kind].run(args, common)
    md = Path(args.out) / args.kind / "results.md"
    if args.json:
        print((md.parent / "results.json").read_text().strip())
    else:
        print(md.read_text())
        print(f"written: {md.parent}")
    return 0


def cmd_export_data(args) -> int:
    from .data import prepare
    from .data.longctr import export_longctr

    ds, _, _ = prepare(args.source, **_data_rules(args))
    out = export_longctr(ds, Path(args.out))
    print(f"{ds.meta.name} -> {out} ({args.format}: train/valid/test.parquet, user_info.parquet, "
          f"item_info.parquet, feature_map.json)")
    return 0


def cmd_export(args) -> int:
    from .serving.bundle import export_bundle, load_bundle

    try:
        out = export_bundle(args.checkpoint, args.out, args.source, args.cache_codec, args.rebuild_first_layer)
    except ValueError as e:
        raise SeqctrError(f"--cache-codec / --rebuild-first-layer: {e}") from None
    if args.compile:
        from .serving.export import compile_bundle

        try:
            spec = compile_bundle(out, args.max_candidates, args.compiled_select)
        except SeqctrError as e:
            raise SeqctrError(f"bundle written to {out} without compiled scoring: {e}") from None
        m = spec["measured"]
        print(f"compiled scoring: {out}/{spec['file']} (windows {spec['min_window']}-{spec['max_window']} events, "
              f"1-{spec['max_candidates']} candidates; torch {spec['torch']}); measured here at {m['events']} events x "
              f"{m['candidates']} candidates: {m['compiled_ms']:.2f} ms vs eager {m['eager_ms']:.2f} ms "
              f"({m['speedup']:.2f}x): served {'through it' if m['speedup'] >= 1 else 'eagerly'} by default "
              "(seqctr serve --compiled auto|always|never)")
    b = load_bundle(out)
    form = b.serving
    print(f"bundle: {out} (model {b.info['config']['model']['name']}, fingerprint {b.fingerprint}, "
          f"{len(b.items):,} items, {len(b.users):,} users; caches served in {form['cache_codec']}"
          f"{', first layer rebuilt per request' if form['rebuild_first_layer'] else ''})")
    return 0


def cmd_predict(args) -> int:
    from . import load
    from .serving.predict import predict_table

    scorer = load(args.model)
    res = predict_table(scorer, args.input, args.out, columns=_columns_arg(args.columns),
                        label_column=args.label_column, chunk=args.chunk,
                        progress=False if args.no_progress else None)
    print(dumps(res) if args.json else f"scored {res['rows']:,} events -> {res['out']}")
    return 0


def _checkout() -> str:
    """The folder to ``pip install -e`` for an extra: this source checkout when seqctr runs from one."""
    root = Path(__file__).resolve().parents[2]
    return str(root) if (root / "pyproject.toml").is_file() else "."


def _serve_extra_check() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise SeqctrError(f"seqctr serve needs the serve extra (missing {', '.join(missing)}): "
                          f"pip install -e '{_checkout()}[serve]' (this checkout), or pip install 'seqctr[serve]'")


def _histories_kw(args) -> dict:
    rules = _data_rules(args)
    return {"source": args.histories if hasattr(args, "histories") else args.source, "columns": rules["columns"],
            "label": rules["label"], "items": rules["items"], "users": rules["users"]}


def _say_loaded(res: dict, where: str) -> None:
    print(f"histories: {res['users']:,} users, {res['events']:,} events -> {where} in {res['seconds']:.1f} s",
          flush=True)


def cmd_histories(args) -> int:
    from .serving.histories import load_histories
    from .serving.stores import open_store

    if args.store == "memory" and not args.history_file:
        raise SeqctrError("seqctr histories writes to a persistent store: --history-file F or --store redis://...")
    store = open_store(args.store, "", 0, args.history_file)
    try:
        res = load_histories(store, **_histories_kw(args), progress=False if args.no_progress else None)
    finally:
        store.close()
    if args.json:
        print(dumps(res))
    else:
        _say_loaded(res, args.history_file or args.store)
    return 0


def cmd_serve(args) -> int:
    import json
    import os
    import shutil
    import tempfile

    from .serving.bundle import load_bundle
    from .serving.stores import open_history_file, open_store

    _serve_extra_check()
    import uvicorn
    if args.workers > 1 and args.store == "memory" and not args.history_file:
        raise SeqctrError("--workers > 1 with the memory store needs --history-file (shared histories) "
                          "or --store redis://...: otherwise each worker sees other histories")
    if args.score_slots < 0:
        raise SeqctrError(f"--score-slots {args.score_slots}: expected 0 (no bound) or more")
    b = load_bundle(args.model)                         # fail here, with one line, not in each worker
    if not 0 <= args.window <= b.max_len:
        raise SeqctrError(f"--window {args.window}: expected 1..{b.max_len} (the model's max_len), or 0")
    try:                                                # the cache form: the flags, else the bundle's
        b.serving_form(args.cache_codec, args.rebuild_first_layer or None)   # a flag left off: the bundle's
    except ValueError as e:
        raise SeqctrError(f"--cache-codec / --rebuild-first-layer: {e}") from None
    if args.history_file:
        open_history_file(args.history_file, busy_timeout_s=1.0).close()   # unusable or locked: one line now
    env = {"SEQCTR_SERVE_MODEL": str(args.model), "SEQCTR_SERVE_STORE": args.store,
           "SEQCTR_SERVE_CACHE_BYTES": str(args.cache_bytes // max(args.workers, 1)), "SEQCTR_SERVE_HISTORY_FILE": args.history_file or "",
           "SEQCTR_SERVE_MAX_CANDIDATES": str(args.max_candidates), "SEQCTR_SERVE_MAX_EVENTS": str(args.max_events),
           "SEQCTR_SERVE_MAX_BODY": str(args.max_body), "SEQCTR_SERVE_THREADS": str(args.threads),
           "SEQCTR_SERVE_MAX_HISTORY": str(args.max_history), "SEQCTR_SERVE_LOG_LEVEL": args.log_level,
           "SEQCTR_SERVE_CACHE_CODEC": args.cache_codec or "", "SEQCTR_SERVE_ADMIN_TOKEN": args.admin_token,
           "SEQCTR_SERVE_WINDOW": str(args.window), "SEQCTR_SERVE_REBUILD_FIRST_LAYER": str(int(args.rebuild_first_layer)),
           "SEQCTR_SERVE_COMPILED": args.compiled, "SEQCTR_SERVE_SCORE_SLOTS": str(args.score_slots),
           "SEQCTR_SERVE_CONTROL": "", "SEQCTR_SERVE_HISTORIES": ""}
    if args.histories:
        if args.store == "memory" and not args.history_file:   # the one worker loads its own memory
            env["SEQCTR_SERVE_HISTORIES"] = json.dumps(_histories_kw(args))
        else:                                                  # a shared store: loaded once, here
            from .serving.histories import load_histories

            store = open_store(args.store, b.fingerprint, 0, args.history_file)
            try:
                _say_loaded(load_histories(store, **_histories_kw(args)), args.history_file or args.store)
            finally:
                store.close()
    metrics_dir = control_dir = None
    if args.admin_token:        # the control file every worker follows (seqctr.serving.live)
        from .serving.live import write_control

        control_dir = tempfile.mkdtemp(prefix="seqctr-control-")
        env["SEQCTR_SERVE_CONTROL"] = str(Path(control_dir) / "control.json")
        write_control(Path(env["SEQCTR_SERVE_CONTROL"]), str(args.model), 0)
    if args.workers > 1:        # one /metrics view over every worker (prometheus-client multiprocess mode)
        metrics_dir = tempfile.mkdtemp(prefix="seqctr-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ.update(env)
    print(f"serving {args.model} (fingerprint {b.fingerprint}) on http://{args.host}:{args.port} "
          f"store={args.store} workers={args.workers}; docs at /docs", flush=True)
    try:
        uvicorn.run("seqctr.serving.http:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level)
    finally:
        for d in (metrics_dir, control_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
    return 0


def cmd_configs(args) -> int:
    from .config import PACKAGED, packaged_configs
    from .config_reference import reference

    if args.reference:
        print(reference())
    else:
        for name in packaged_configs():
            print(f"{name:24s} {PACKAGED / (name + '.yaml')}")
    return 0


def cmd_report(args) -> int:
    from .experiments.report import write_experiments_report

    path = write_experiments_report(Path(args.out))
    print(f"report: {path}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has one worth showing (not None / False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or action.default == [] or not action.help:
            return action.help
        return super()._get_help_string(action)


class _Commands:
    """What every command group's parser shares: the sub-command table, the ``--debug`` parent, the
    data options, the help formatter."""

    def __init__(self, sub, common, fmt):
        from .metrics import DEFAULT_BUCKETS

        self.sub, self.common, self.fmt, self.data = sub, common, fmt, data_options()
        self.source_help = ("ml100k | ml-latest-small (built in) | a GroupLens ml-100k folder | a LongCTR folder | "
                            "an EB-NeRD folder | an interactions table (.parquet/.csv/.tsv)")
        self.buckets = dict(type=comma_list(float), default=",".join(map(str, DEFAULT_BUCKETS)),
                            help="length bucket edges")

    def command(self, name, help, parents=()):
        return self.sub.add_parser(name, help=help, description=help, parents=[self.common, *parents],
                                   formatter_class=self.fmt)


def _data_commands(c: _Commands) -> None:
    """prepare, analyze, export-data: datasets and their length buckets."""
    pr = c.command("prepare", "prepare (and cache) a dataset; print its split counts", [c.data])
    pr.add_argument("source", help=c.source_help)
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--buckets", **c.buckets)
    pr.add_argument("--force", action="store_true", help="rebuild even if cached")
    pr.set_defaults(func=cmd_prepare)

    an = c.command("analyze", "length-bucket analyses: data | kv")
    an_sub = an.add_subparsers(dest="what", required=True)
    ad = an_sub.add_parser("data", parents=[c.common, c.data], formatter_class=c.fmt,
                           help="users / samples / label rate / diversity per length bucket")
    ad.add_argument("source", nargs="?", default="ml100k", help=c.source_help)
    ad.add_argument("--buckets", **c.buckets)
    ad.add_argument("--out", default="runs/experiments/data", help="folder for data.json / data.md / data.png")
    ad.add_argument("--json", action="store_true", help="print one JSON object")
    ad.set_defaults(func=cmd_analyze_data)

    ak = an_sub.add_parser("kv", parents=[c.common], formatter_class=c.fmt,
                           help="SVD of a trained model's short-branch K/V: shared vs user-specific")
    ak.add_argument("--checkpoint", required=True, help="a two-branch model's best.pt")
    ak.add_argument("--users", type=int, default=500, help="users whose K/V enter the SVD")
    ak.add_argument("--out", default="runs/experiments/kv", help="folder for kv.json / kv.md / kv.png")
    ak.add_argument("--json", action="store_true", help="print kv.json instead of the markdown")
    ak.set_defaults(func=cmd_analyze_kv)

    xd = c.command("export-data", "write a prepared dataset in another library's layout", [c.data])
    xd.add_argument("source", help=c.source_help)
    xd.add_argument("--format", choices=["longctr"], default="longctr",
                    help="longctr: FuxiCTR/LongCTR parquet (train/valid/test, user_info, item_info, feature_map.json)")
    xd.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    xd.set_defaults(func=cmd_export_data)


def _model_commands(c: _Commands) -> None:
    """train, evaluate."""
    tr = c.command("train", "train a model from a YAML config")
    tr.add_argument("--config", required=True, help="YAML run config: a file, or a packaged name such as din, "
                    "ml100k/twin, mlls/sim_1000 (`extends:` merges a base file)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    tr.add_argument("--out", help="run folder (default runs/<source>-<model>)")
    tr.add_argument("--resume", action="store_true", help="continue after the last finished epoch")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    tr.add_argument("--nproc", type=int, default=1, help="processes on this machine (DDP via torchrun; gloo on "
                    "CPU, NCCL on GPUs); for several machines run torchrun -m seqctr train yourself")
    tr.set_defaults(func=cmd_train)

    ev = c.command("evaluate", "evaluate a checkpoint overall and per length bucket")
    ev.add_argument("--checkpoint", required=True, help="a run's best.pt or last.pt")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"], help="which split to score")
    ev.add_argument("--source", help="other data (e.g. a newer time slice), read in the model's id space: ids it "
                    "never saw are out of vocabulary")
    ev.add_argument("--predictions", metavar="FILE.npz", help="also write the split's predictions (index, prob)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ev.add_argument("--json", action="store_true", help="print one JSON object (empty buckets: null)")
    ev.set_defaults(func=cmd_evaluate)


def _experiment_commands(c: _Commands) -> None:
    """experiment SUITE: one sub-command per registered suite (seqctr.experiments.suites)."""
    runs = argparse.ArgumentParser(add_help=False)
    g = runs.add_argument_group("runs (every suite)")
    g.add_argument("--seeds", type=comma_list(int), default="2024,2025,2026", help="one run per seed and variant")
    g.add_argument("--config-dir", default="ml100k", help="folder of <backbone>.yaml run configs, or a packaged "
                   "set: ml100k, mlls")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    g.add_argument("--jobs", type=int, default=2, help="runs at a time")
    g.add_argument("--threads", type=int, default=1, help="torch threads per run")
    g.add_argument("--out", default="runs/experiments", help="results root (runs resume from here)")
    g.add_argument("--json", action="store_true", help="print results.json instead of the markdown table")
    from .experiments.suites import SUITES

    ex = c.command("experiment", f"experiment suites: {' | '.join(SUITES)} (`seqctr experiment SUITE --help`)")
    ex_sub = ex.add_subparsers(dest="kind", required=True, metavar="SUITE")

    for suite in SUITES.values():
        sp = ex_sub.add_parser(suite.name, help=suite.help, description=suite.help, parents=[c.common, runs],
                               formatter_class=c.fmt)
        if suite.one:   # a suite of one backbone: --backbone (--backbones NAME still read, one name only)
            sp.add_argument("--backbone", default=None, help=f"the backbone (default: {suite.backbones})")
            sp.add_argument("--backbones", type=comma_list(str), default=[suite.backbones], help=argparse.SUPPRESS)
        else:
            sp.add_argument("--backbones", type=comma_list(str), default=suite.backbones, help="comma list")
        suite.options(sp)
        sp.set_defaults(func=cmd_experiment)


def _serving_commands(c: _Commands) -> None:
    """export, predict, serve, histories: bundles and the scoring service."""
    xp = c.command("export", "write a trained run's model bundle: all a server needs (weights, config, vocabularies)")
    xp.add_argument("--checkpoint", required=True, help="the run's best.pt")
    xp.add_argument("--out", required=True, help="bundle folder to write (replaced atomically)")
    xp.add_argument("--source", help="override the dataset source stored in the checkpoint's config")
    xp.add_argument("--cache-codec", default="fp32",
                    help="the cache codec the bundle is served with by default (seqctr serve --cache-codec)")
    xp.add_argument("--rebuild-first-layer", action="store_true",
                    help="HSTU: serve with the first layer rebuilt per request by default (seqctr serve "
                         "--rebuild-first-layer)")
    xp.add_argument("--compile", action="store_true",
                    help="also capture cached scoring as one graph (torch.export) and compile it ahead of time "
                         "(AOTInductor, about a minute) into the bundle, timed against eager here; seqctr serve and "
                         "seqctr.load score through it by default where it measured faster, under the same torch "
                         "version (not DIEN: its recurrence cannot be captured)")
    xp.add_argument("--max-candidates", type=int, default=1000,
                    help="--compile: the most candidates per request the compiled graph takes (more: eager)")
    xp.add_argument("--compiled-select", choices=["op", "dense"], default="op",
                    help="--compile, top-k models (SIM, TWIN, ETA): capture the selection as one op calling seqctr's "
                         "eager selection (op: faster) or as plain torch ops (dense: the package runs without seqctr)")
    xp.set_defaults(func=cmd_export)

    pd = c.command("predict", "score every event of an interactions table with a bundle (history = the "
                            "user's earlier events in the table)")
    pd.add_argument("--model", required=True, help="bundle folder (seqctr export)")
    pd.add_argument("--input", required=True, help="interactions table (.parquet/.csv/.tsv)")
    pd.add_argument("--out", required=True, help="scores parquet to write")
    pd.add_argument("--columns", help="role=column list: user=,item=,timestamp=, names=a+b+c (CSV without header)")
    pd.add_argument("--label-column", help="a column copied into the output beside the score")
    pd.add_argument("--chunk", type=int, default=4096, help="events scored per batch")
    pd.add_argument("--json", action="store_true", help="print one JSON object")
    pd.add_argument("--no-progress", action="store_true", help="no progress bar")
    pd.set_defaults(func=cmd_predict)

    sv = c.command("serve", "HTTP scoring service of a bundle (FastAPI + uvicorn; needs the serve extra)", [c.data])
    sv.add_argument("--model", required=True, help="bundle folder (seqctr export)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--store", default="memory", help="memory | redis://host:port/db (histories and caches)")
    sv.add_argument("--workers", type=int, default=1, help="worker processes")
    sv.add_argument("--cache-bytes", type=byte_size, default=256 << 20, help="memory store: the in-process cache budget of the whole service in bytes (resident bytes "
                    "the caches hold), split evenly across the workers")
    sv.add_argument("--history-file", help="memory store: persist histories to this SQLite file")
    sv.add_argument("--cache-codec", default=None,
                    help="the form caches take in the store (seqctr.serving.codecs): fp32 as computed, bf16, int8 "
                         "(a scale per block of values), or rankR (e.g. rank16: each K/V tensor's rank-R factors in "
                         "int8); integers and masks bit-packed; scores are those of the decoded cache (default: the "
                         "bundle's, seqctr export --cache-codec; fp32)")
    sv.add_argument("--rebuild-first-layer", action="store_true",
                    help="HSTU: leave the first layer's K/V out of the caches and rebuild them from the cached item "
                         "ids at each request (a function of the item alone): about half the bytes of a two-layer "
                         "cache, the same scores (on by default when the bundle records it)")
    sv.add_argument("--window", type=int, default=0, metavar="K",
                    help="caches hold the most recent K events only (recent-window truncation: fewer bytes per "
                         "user; the true history length still conditions the model); 0 = the model's max_len")
    sv.add_argument("--compiled", choices=["auto", "always", "never"], default="auto",
                    help="score through the bundle's compiled graph (seqctr export --compile): auto where it measured "
                         "faster than eager when compiled, always, or never")
    sv.add_argument("--max-candidates", type=int, default=1000, help="cap on candidates per request")
    sv.add_argument("--max-events", type=int, default=1000, help="cap on events per append")
    sv.add_argument("--max-body", type=int, default=1 << 20, help="cap on request body bytes")
    sv.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = torch default)")
    sv.add_argument("--score-slots", type=int, default=0, metavar="N",
                    help="at most N score requests compute at once per worker, the others wait in arrival order "
                         "(0 = no bound: every request computes in its own thread as it arrives)")
    sv.add_argument("--max-history", type=int, default=0,
                    help="cap on a request's own history (0 = ten model windows)")
    sv.add_argument("--histories", metavar="SOURCE",
                    help="load every user's history from this data source first (read as `prepare` reads it, "
                    "with the same data options); shared stores are loaded once, before the workers start")
    sv.add_argument("--log-level", default="warning", help="uvicorn log level (every 5xx is logged at any level)")
    sv.add_argument("--admin-token", default=os.environ.get("SEQCTR_SERVE_ADMIN_TOKEN", ""),
                    help="enable POST /v1/admin/reload (a live model swap, every worker) for requests with "
                         "'Authorization: Bearer TOKEN' (default: $SEQCTR_SERVE_ADMIN_TOKEN; empty: no admin route)")
    sv.set_defaults(func=cmd_serve)

    hs = c.command("histories", "load every user's history from a data source into a persistent serving store "
                 "(what `seqctr serve --histories` does before it starts)", [c.data])
    hs.add_argument("source", help=c.source_help)
    hs.add_argument("--store", default="memory", help="memory (with --history-file) | redis://host:port/db")
    hs.add_argument("--history-file", help="the SQLite history file that `seqctr serve --history-file` reads")
    hs.add_argument("--json", action="store_true", help="print one JSON object")
    hs.add_argument("--no-progress", action="store_true", help="no progress bar")
    hs.set_defaults(func=cmd_histories)


def _other_commands(c: _Commands) -> None:
    """configs, report, demo."""
    cf = c.command("configs", "list the packaged run configs (use them as --config NAME), or print the "
                            "configuration reference")
    cf.add_argument("--reference", action="store_true", help="print every config key, backbone option and default "
                    "(markdown; docs/configuration.md is this)")
    cf.set_defaults(func=cmd_configs)

    rp = c.command("report", "one markdown report from whatever experiment results exist")
    rp.add_argument("--out", default="runs/experiments", help="results root to read and write report.md into")
    rp.set_defaults(func=cmd_report)

    de = c.command("demo", "train and evaluate DIN on ml100k; print the table, write the report")
    de.add_argument("--out", default="runs/demo", help="run folder")
    de.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    de.add_argument("--resume", action="store_true", help="continue after the last finished epoch")
    de.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    de.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``seqctr`` parser, built per command group."""
    from .utils.version import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")
    p = argparse.ArgumentParser(prog="seqctr", description=__doc__.split("\n\n")[0], formatter_class=_Help,
                                epilog="`seqctr COMMAND --help` shows a command's options.")
    p.add_argument("--version", action="version", version=f"seqctr {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    c = _Commands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common, _Help)
    for group in (_data_commands, _model_commands, _experiment_commands, _serving_commands, _other_commands):
        group(c)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()              # glibc: freed tensors stay in the process (seqctr.utils.malloc)
    try:
        return args.func(args)
    except SeqctrError as e:
        if args.debug:
            raise
        print(f"seqctr: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqctr ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("seqctr: interrupted (finished epochs are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
