"""The README's "Results at a glance" table is the one its results files give
(bench/readme_glance.py renders it; run that script after changing a results file)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_at_a_glance_equals_the_results_files():
    spec = importlib.util.spec_from_file_location("readme_glance", ROOT / "bench" / "readme_glance.py")
    glance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glance)
    readme = (ROOT / "README.md").read_text()
    assert glance.block(readme) == glance.render(ROOT), \
        "README's table disagrees with its results files: run .venv/bin/python bench/readme_glance.py"


def test_the_glance_table_appears_once():
    """The generator writes its block only (an earlier version also replaced matching text elsewhere)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert text.count("| backbone | test AUC seqctr (mean of seeds) |") == 1
    assert "`--items TABLE` / `--users TABLE`" in text
