"""The `qajax` argument parser: global flags, one subparser per command, each with an example."""

from __future__ import annotations

import argparse

from qajax.cli import bench_command, run_commands, squad_commands, tool_commands

# What `qajax --help` says first (it was qajax/cli.py's docstring).
DESCRIPTION = """The `qajax` command. Each subcommand parses its arguments and calls one library function; this is the
only package that prints to the user or exits with a status."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after every help text (an unset option's help says what it falls back to); the epilog's
    examples keep their lines."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


EXAMPLES = {
    "train": "qajax train configs/tiny.py --workdir runs/tiny --set train.steps=300\n"
    "qajax train configs/squad.py --workdir runs/squad --set model.pretrained=bert-base-uncased",
    "import-hf": "qajax import-hf bert-base-uncased ckpt/bert   # a hub id or a folder\n"
    "qajax import-hf base-hf/ ckpt/tuned --adapter lora-adapter/",
    "export-hf": "qajax export-hf runs/squad hf-squad/ --formats pt\n"
    "qajax export-hf runs/lora adapter/ --adapter-only   # PEFT adapter folder\n"
    "qajax export-hf runs/squad hf-squad/ --push-to-hub me/squad-model",
    "eval": "qajax eval runs/squad dev-v2.0.json --out eval/   # eval_results.json, predictions.json, ...",
    "predict": 'qajax predict runs/squad --question "Who?" --context "Ada founded it."\n'
    "qajax predict runs/squad --file questions.json --out answers/ --skip-invalid",
    "squad-eval": "qajax squad-eval dev-v2.0.json predictions.json --na-prob null_odds.json",
    "bench": "qajax bench --preset minilm --entries qajax,hf-flax,lora-r8 --rounds 3",
    "compile": "qajax compile configs/squad_bert_base.py --target v5e:2x2 --json\n"
    "qajax compile configs/squad_bert_base.py --target h100\n"
    "qajax compile configs/squad_bert_base.py --target v5p:4x4x4 --set parallel.fsdp=4 --max-batch",
    "plot": "qajax plot runs/squad --keys loss,eval/f1",
    "demo": "qajax demo --workdir runs/demo",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qajax")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qajax", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"qajax {_version()}")
    verbosity = argparse.ArgumentParser(add_help=False)
    for p, default in ((parser, 0), (verbosity, argparse.SUPPRESS)):  # before or after the subcommand
        p.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=default,
            help="more log lines: -v other libraries' INFO, -vv also Orbax's",
        )
        p.add_argument("-q", "--quiet", action="count", default=default, help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run):
        p = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=[verbosity],
            formatter_class=_HelpFormatter,
            epilog="example:\n  " + EXAMPLES[name].replace("\n", "\n  "),
        )
        p.set_defaults(run=run)
        return p

    for group in (run_commands, squad_commands, bench_command, tool_commands):  # the order of `qajax --help`
        group.add_commands(command)
    return parser
