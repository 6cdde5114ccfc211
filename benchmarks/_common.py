"""Shared by the benchmark scripts and make_docs.py: the `--json` record and its Markdown tables.

A record is {"benchmark", "title", "command", "machine", "tables", "details"}; each
table is {"title", "columns", "rows", "note"} with rows as lists in column order.
docs/benchmarks.md is rendered from these records alone, so what a script prints
and what the docs show are the same cells.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from endofuse.machine import describe_machine, load_average, machine_line

# The load when the script started; describe_machine() at the end gives the load after the run.
LOAD_AT_START = load_average()


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the results, the command and the machine description as JSON")


def table(title: str, columns: list[str], rows: list[list], note: str = "") -> dict:
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "note": note}


def record(benchmark: str, title: str, tables: list[dict], argv: list[str] | None = None,
           details: dict | None = None) -> dict:
    """The JSON record of one run; `argv` defaults to this process's arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {
        "benchmark": benchmark,
        "title": title,
        "command": shlex.join(["python", f"benchmarks/{benchmark}.py", *args]),
        "machine": {**describe_machine(), "load_average_at_start": LOAD_AT_START},
        "tables": tables,
        "details": details or {},
    }


def cell(value) -> str:
    """A table cell: floats to a precision that suits their size, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def markdown(tab: dict) -> str:
    lines = ["| " + " | ".join(tab["columns"]) + " |", "|" + "---|" * len(tab["columns"])]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in tab["rows"]]
    return "\n".join(lines)


def report(rec: dict, json_path: Path | None) -> None:
    """Prints the record's tables (with the machine line) and writes the JSON when asked."""
    print(f"# {rec['title']}\n# {machine_line(rec['machine'])}")
    for tab in rec["tables"]:
        print(f"\n{tab['title']}\n\n{markdown(tab)}")
        if tab.get("note"):
            print(f"\n{tab['note']}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"\nwrote {json_path}")
