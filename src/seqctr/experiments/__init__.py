"""Result tables and reports."""
from .report import format_metrics_table, write_run_report

__all__ = ["format_metrics_table", "write_run_report"]
