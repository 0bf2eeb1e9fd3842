"""What the ablation scripts share: the command line, one training run per variant, and a report rewritten
from every row recorded so far (rows of earlier commands are kept in the report's .jsonl)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from qajax.host_memory import keep_freed_host_memory


def run_variants(
    argv, *, doc: str, script: str, variants: Mapping, default: str, report: Path, run_one: Callable,
    write_report: Callable, add_arguments: Callable | None = None,
) -> int:  # fmt: skip
    """Parses --workdir/--variants/--set/--report (and what `add_arguments(parser)` adds), runs
    `run_one(workdir / variant, overrides, command, args)` for each variant (its VARIANTS overrides, then
    --set) and records its result dict as a row."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a new folder: one training workdir per variant inside")
    parser.add_argument("--variants", default=default, help=f"comma-separated, of {sorted(variants)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--report", default=str(report), help="markdown file to write ('' for none)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    keep_freed_host_memory()  # see qajax/host_memory.py: before the first JAX computation
    chosen = args.variants.split(",")
    unknown = sorted(set(chosen) - set(variants))
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {sorted(variants)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    command = shlex.join([script, *(argv if argv is not None else sys.argv[1:])])
    commit = _commit()  # now: the code this process has loaded, whatever is committed while it runs
    for variant in chosen:
        overrides = [*variants[variant], *args.set]
        result = run_one(Path(args.workdir) / variant, overrides, command, args)
        result["variant"] = variant
        result["commit"] = commit
        print(json.dumps({k: v for k, v in result.items() if k != "evaluations"}), flush=True)
        if args.report:
            history = Path(args.report).with_suffix(".jsonl")
            with open(history, "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
            write_report([json.loads(line) for line in history.read_text().splitlines()], Path(args.report))
    return 0


def rows_per_variant(rows: list[dict]) -> dict[str, list[dict]]:
    """{variant: its rows, one per seed (the latest)}, variants in first-seen order; rows carrying a note
    (superseded by a later change) are left out."""
    groups: dict[str, dict] = {}
    for r in rows:
        if not r.get("note"):
            groups.setdefault(r["variant"], {})[r["seed"]] = r
    return {variant: list(by_seed.values()) for variant, by_seed in groups.items()}


def _commit() -> str:
    """The project's git commit (with "+changes" when the tree differs from it), or "" outside a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "qajax"], cwd=root, capture_output=True, text=True)
    except OSError:
        return ""
    if head.returncode:
        return ""
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG, written atomically, and closed."""
    import matplotlib.pyplot as plt

    from qajax.files import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
