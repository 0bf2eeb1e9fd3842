"""The `qajax` command. Each subcommand parses its arguments and calls one library function; this package is
the only place that prints to the user or exits with a status.

    parser.py          the argument parser: global flags, the subcommands and their examples
    run_commands.py    train, import-hf, export-hf
    squad_commands.py  eval, predict, squad-eval
    bench_command.py   bench
    tool_commands.py   compile, plot, demo
"""

from __future__ import annotations

import logging
import sys

from qajax.cli.parser import build_parser
from qajax.errors import QajaxError

__all__ = ["build_parser", "configure_logging", "main"]


def configure_logging(verbosity: int) -> None:
    """qajax's own lines (banner, progress in batch jobs, resume notes) at INFO by default; -q: warnings only;
    -v: other libraries' INFO too; -vv: Orbax's notes as well (absl, tens of lines per checkpoint)."""
    logging.basicConfig(
        level=logging.INFO if verbosity >= 1 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    logging.getLogger("qajax").setLevel(logging.INFO if verbosity >= 0 else logging.WARNING)
    if verbosity < 2:
        for name in ("absl", "orbax"):
            logging.getLogger(name).setLevel(logging.ERROR)  # orbax notes on existing and read-only folders


def main(argv: list[str] | None = None) -> int:
    from qajax.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # before JAX starts its threads: a fifth of a CPU step was page faults
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    try:
        return args.run(args)
    except QajaxError as e:
        print(f"qajax {args.command}: error: {e}", file=sys.stderr)
        return 2
