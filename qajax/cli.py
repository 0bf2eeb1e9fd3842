"""The `qajax` command. Each subcommand parses its arguments and calls one library function; this is the
only module that prints to the user or exits with a status."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qajax.errors import QajaxError


def _import_hf(args) -> int:
    import qajax.hf
    from qajax.models.saved import save_model

    _model, params, spec = qajax.hf.from_pretrained(args.src, head=args.head, num_labels=args.num_labels)
    out = save_model(args.out, spec, params, overwrite=args.overwrite)
    print(f"imported {spec.encoder.family} ({spec.head} head) from {args.src} into {out}")
    return 0


def _export_hf(args) -> int:
    import qajax.hf
    from qajax.models.saved import load_model

    model, params, spec = load_model(args.ckpt)
    formats = tuple(f for f in args.formats.split(",") if f)
    out = qajax.hf.save_pretrained(model, params, spec, args.out, formats=formats, overwrite=args.overwrite)
    print(f"exported {spec.encoder.family} ({spec.head} head) from {args.ckpt} to {out} as {', '.join(formats)}")
    return 0


def _train(args) -> int:
    from qajax import config as config_lib
    from qajax.train.loop import train

    config = config_lib.load(args.config, args.set)
    summary = train(config, args.workdir)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _demo(args) -> int:
    from qajax.demo import run_demo

    print(json.dumps(run_demo(args.workdir), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qajax", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train (or resume) a config in a workdir")
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard; resumed if present")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(run=_train)

    p = commands.add_parser("import-hf", help="HF model folder -> qajax checkpoint")
    p.add_argument("src", help="folder with config.json and model.safetensors / pytorch_model.bin / flax_model.msgpack")
    p.add_argument("out", help="qajax checkpoint folder to create")
    p.add_argument("--head", default="qa", choices=("qa", "classification", "encoder"))
    p.add_argument("--num-labels", type=int, default=None, help="classification labels (default: from config)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_import_hf)

    p = commands.add_parser("export-hf", help="qajax checkpoint -> HF folder (Flax and/or PyTorch)")
    p.add_argument("ckpt", help="qajax checkpoint folder (spec.json + params/)")
    p.add_argument("out", help="HF folder to create")
    p.add_argument("--formats", default="flax,pt", help="comma-separated: flax, pt")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=_export_hf)

    p = commands.add_parser("demo", help="the embedded default job (see README)")
    p.add_argument("--workdir", default="runs/demo")
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args)
    except QajaxError as e:
        print(f"qajax {args.command}: error: {e}", file=sys.stderr)
        return 2
