"""The configuration reference (docs/configuration.md), generated from the config dataclasses and
every backbone's constructor and docstring, so it cannot drift from the code (a test compares)."""
from __future__ import annotations

import dataclasses
import inspect
import re

from .config import DataConfig, EvalConfig, LainConfig, ModelConfig, SplitRule, TrainConfig, packaged_configs
from .models import backbone_doc, backbone_names, backbone_options


def _field_docs(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each dataclass field in its source: the code is the documentation."""
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):\s*[^=]+=.*?#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


def _default(f) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())              # type: ignore[misc]
    return "(required)"


def reference() -> str:
    """The configuration reference (docs/configuration.md), generated from the dataclasses, the LAIN
    config and every backbone's constructor, so it cannot drift from the code (a test compares)."""
    out = ["# Configuration reference", "",
           "Generated from the code by `seqctr configs --reference` (a test keeps this file equal to it). A run "
           "config is YAML with four sections; `extends: base.yaml` merges a base file; `--set section.key=value` "
           "overrides any key (the value is parsed as YAML). Unknown keys and out-of-range values are errors "
           "before any work starts.", ""]
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig),
                         ("data.split", SplitRule), ("model.lain", LainConfig)):
        docs = _field_docs(cls)
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out += [f"## `{section}`", "", doc, "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            out.append(f"| `{f.name}` | `{_default(f)}` | {docs.get(f.name, '').replace('|', chr(92) + '|')} |")
        out.append("")
    out += ["## Backbone options (`model.options`)", "",
            "Passed to the backbone's constructor; the defaults below are the constructor's. Every backbone "
            "documents its options in its class docstring (`seqctr/models/<name>.py`).", ""]
    for name in backbone_names():
        opts = backbone_options(name)
        doc = backbone_doc(name).replace("|", chr(92) + "|")
        out += [f"### `{name}`", "", doc, "", "| option | default |", "|---|---|"]
        out += [f"| `{k}` | `{v!r}` |" for k, v in sorted(opts.items())]
        out.append("")
    out += ["## Packaged configs", "", "`--config NAME` finds these from any directory (`din` = `ml100k/din`):", "",
            ", ".join(f"`{n}`" for n in packaged_configs()), ""]
    return "\n".join(out)
