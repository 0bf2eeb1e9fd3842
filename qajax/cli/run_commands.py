"""`qajax train`, `import-hf` and `export-hf`: a model in from HF, trained, and out to HF again."""

from __future__ import annotations

import json

from qajax.errors import QajaxError


def _import_hf(args) -> int:
    from qajax.hub import resolve

    src = resolve(args.src, what="import-hf SRC")  # first: a missing name fails before JAX loads
    import qajax.hf
    from qajax.checkpoints.saved import save_model

    _model, params, spec = qajax.hf.from_pretrained(src, head=args.head, num_labels=args.num_labels)
    if args.adapter:
        from qajax.checkpoints.peft import merge_adapter

        params = merge_adapter(params, spec, resolve(args.adapter, what="--adapter"))
    out = save_model(args.out, spec, params, overwrite=args.overwrite)
    adapter = f" with the LoRA adapter {args.adapter} merged" if args.adapter else ""
    print(f"imported {spec.encoder.family} ({spec.head} head) from {args.src}{adapter} into {out}")
    return 0


def _export_hf(args) -> int:
    import qajax.hf

    formats = tuple(f for f in args.formats.split(",") if f)
    if args.adapter_only and args.base_only:
        raise QajaxError("--adapter-only and --base-only exclude each other: export each in its own folder")
    if args.adapter_only:
        from qajax.checkpoints.peft import save_adapter

        out = save_adapter(args.ckpt, args.out, overwrite=args.overwrite)
        what = "the LoRA adapter (PEFT: adapter_config.json, adapter_model.safetensors)"
    else:
        if args.base_only:
            from qajax.checkpoints.peft import load_base

            model, params, spec = load_base(args.ckpt)
        else:
            from qajax.checkpoints.saved import load_model

            model, params, spec = load_model(args.ckpt)
        out = qajax.hf.save_pretrained(model, params, spec, args.out, formats=formats, overwrite=args.overwrite)
        left_out = ", adapters left out" if args.base_only else ""
        what = f"{spec.encoder.family} ({spec.head} head{left_out}) as {', '.join(formats)}"
    print(f"exported {what} from {args.ckpt} to {out}")
    if args.push_to_hub:
        from qajax.hub import push

        print(f"pushed {out} to {push(out, args.push_to_hub, private=args.private)}")
    return 0


def _train(args) -> int:
    from qajax import config as config_lib
    from qajax.run import train

    config = config_lib.load(args.config, args.set)
    summary = train(config, args.workdir, allow_config_change=args.allow_config_change)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def add_commands(command) -> None:
    """train, import-hf, export-hf."""
    p = command("train", "train (or resume) a config in a workdir", _train)
    p.add_argument("config", help="configs/NAME.py, optionally with :arg")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard; resumed if present")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeat)")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even where the config changes what the run computes (model, data, optimizer...)",
    )

    p = command("import-hf", "HF model folder or hub id -> qajax checkpoint", _import_hf)
    p.add_argument(
        "src", help="an HF folder (config.json + safetensors / pytorch_model.bin / flax_model.msgpack) or hub id"
    )
    p.add_argument("out", help="qajax checkpoint folder to create")
    p.add_argument("--head", default="qa", choices=("qa", "classification", "encoder"), help="task head to put on")
    p.add_argument("--num-labels", type=int, default=None, help="classification labels (None: from config.json)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a PEFT LoRA adapter folder to merge into SRC")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = command("export-hf", "qajax checkpoint or workdir -> HF folder (Flax and/or PyTorch)", _export_hf)
    p.add_argument("ckpt", help="a qajax checkpoint folder (spec.json + params/) or a training workdir")
    p.add_argument("out", help="HF folder to create")
    p.add_argument("--formats", default="flax,pt", help="comma-separated: flax, pt")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="a LoRA run as a PEFT adapter folder: adapter_config.json, adapter_model.safetensors",
    )
    p.add_argument("--base-only", action="store_true", help="a LoRA run's frozen base model, adapters left out")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="then upload OUT to this hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
