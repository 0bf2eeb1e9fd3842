"""The train step of a config compiled for this CPU, reduced to what decides its speed: prints XLA's flops and
bytes and a hash of the optimized HLO with names, metadata and the scalar key arithmetic of the dropout rngs
taken out (instructions sorted). Two checkouts that print the same hash run the same array program.

    PYTHONPATH=CHECKOUT python scripts/cpu_step_program.py [CONFIG] [--set k=v ...] [--out FILE]

Run from the checkout (CONFIG: configs/squad.py); --out writes the reduced HLO, for a diff.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re

# Scalars and the tiny uint32/int32/pred arrays of rng keys and counters: their order and count move when the
# code that derives dropout keys changes, without any work on the activations changing with them.
_SMALL = re.compile(r"= \(?(u32|s32|pred)\[\d?\]|u32\[[124]\]\{0\}")


# The module's header and its tables of source locations (numbered rows under these headings).
_NOT_PROGRAM = re.compile(r"HloModule |(FileNames|FunctionNames|FileLocations|StackFrames)$|\d+ ")


def reduce_hlo(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if _SMALL.search(line) or _NOT_PROGRAM.match(line):
            continue
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        line = re.sub(r"(\.clone)+|\.\d+", "", line)
        lines.append(re.sub(r"%[A-Za-z_0-9]+", "%x", line))
    return "\n".join(sorted(line for line in lines if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/squad.py")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out")
    args = parser.parse_args()

    import jax

    from qajax import config as qconfig
    from qajax.compile import report
    from qajax.run import prepare_for_shapes

    # Older checkouts (the ones this compares against) name it _compile_train.
    compile_train_step = getattr(report, "compile_train_step", None) or report._compile_train

    prepared, batch_shapes = prepare_for_shapes(qconfig.load(args.config, args.overrides), jax.devices())
    compiled = compile_train_step(prepared, batch_shapes)
    reduced = reduce_hlo(compiled.hlo_text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(reduced)
    digest = hashlib.sha256(reduced.encode()).hexdigest()[:16]
    print(json.dumps({"program_sha256_16": digest, "xla_flops": compiled.flops, "xla_bytes": compiled.bytes,
                      "instructions": reduced.count("\n") + 1}))  # fmt: skip


if __name__ == "__main__":
    main()
