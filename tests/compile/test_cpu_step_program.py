"""scripts/cpu_step_program.py: two HLO texts that differ only in names, metadata, location tables and rng-key
scalars reduce to the same program; a changed array op does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cpu_step_program.py"

HLO = """HloModule jit_step, entry_computation_layout={{NAME}}
FileNames
1 "/work/{NAME}/qajax/train/step.py"
FileLocations
1 {file_name_id=1 function_name_id=1 line={LINE} end_line={LINE} column=14 end_column=55}

%fused_computation{SUFFIX} (param_0.1: f32[32,384]) -> f32[32,384] {
  %param_0.1 = f32[32,384]{1,0} parameter(0)
  ROOT %exp.{N} = f32[32,384]{1,0} {OP}(%param_0.1), metadata={op_name="jit(step)/{NAME}" stack_frame_id=7}
}
  %{NAME}_key.{N} = u32[2]{0} fusion(%rng.1), kind=kLoop, calls=%fused_computation
  %bitcast.{N} = u32[] bitcast(%{NAME}_key.{N})
"""


def _reduce(**fields):
    spec = importlib.util.spec_from_file_location("cpu_step_program", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = HLO
    for key, value in {"NAME": "a", "LINE": "79", "SUFFIX": "", "N": "3", "OP": "exponential", **fields}.items():
        text = text.replace("{" + key + "}", value)
    return module.reduce_hlo(text)


def test_names_metadata_locations_and_key_scalars_do_not_count_but_the_array_ops_do():
    base = _reduce()
    assert base == _reduce(NAME="b", LINE="51", SUFFIX=".clone.clone", N="17")
    assert base != _reduce(OP="tanh")
    assert "u32" not in base and "step.py" not in base and "metadata" not in base
