# ruff: noqa: E501 (HLO text)
"""The HLO reader behind `qajax compile`: bytes moved, loops, branches, collectives, attention kernel."""

from qajax.compile import hlo

# A hand-written optimized-HLO module: a fusion and an all-reduce in the entry, a while loop run 3 times
# whose body reads and writes a [4,8] f32 buffer, and a conditional whose larger branch counts.
PROGRAM = """HloModule example

%fused_computation (param_0: f32[4,8]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %negate = f32[4,8]{1,0} negate(%param_0)
}

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %step = f32[4,8]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation
  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %step)
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%small (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0)
  ROOT %n = f32[2]{0} negate(%a)
}

%large (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0)
  %b = f32[16]{0} broadcast(%a), dimensions={}
  ROOT %n = f32[2]{0} slice(%b), slice={[0:2]}
}

ENTRY %main (x: f32[4,8], flag: pred[], v: f32[2]) -> f32[4,8] {
  %x = f32[4,8]{1,0} parameter(0)
  %flag = pred[] parameter(1)
  %v = f32[2]{0} parameter(2)
  %sum = f32[4,8]{1,0} all-reduce(%x), replica_groups={}, to_apply=%small
  %zero = s32[] constant(0)
  %init = (s32[], f32[4,8]{1,0}) tuple(%zero, %sum)
  %loop = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %branch = f32[2]{0} conditional(%flag, %v, %v), branch_computations={%small, %large}
  ROOT %out = f32[4,8]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_bytes_count_operands_and_results_through_loops_and_the_larger_branch():
    stats = hlo.program_stats(PROGRAM)
    buffer = 4 * 8 * 4
    all_reduce = 2 * buffer
    loop = 3 * (2 * buffer)  # the fusion reads and writes the buffer, three times
    larger_branch = (16 * 4 + 2 * 4) + (2 * 4 + 16 * 4)  # broadcast, then slice
    assert stats.bytes_accessed == all_reduce + loop + larger_branch
    assert stats.collectives == {"all-reduce": {"count": 1, "bytes": buffer}}


def test_shape_bytes_reads_dtypes_and_tuples():
    assert hlo.shape_bytes("bf16[2,3]{1,0}") == 12
    assert hlo.shape_bytes("(f32[4], s8[10], pred[])") == 16 + 10 + 1
    assert hlo.shape_bytes("u4[8]") == 4


def test_attention_kernel_is_read_from_the_custom_calls():
    assert hlo.attention_kernel('custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"') == "cudnn"
    assert hlo.attention_kernel('custom-call(%q), custom_call_target="tpu_custom_call"') == "pallas"
    assert hlo.attention_kernel("%d = f32[2,2] dot(%a, %b)") == "xla"


def test_a_reduce_scatter_written_as_a_fusion_counts_as_one():
    program = """HloModule rs

%all-reduce-scatter.3 (input: f32[32,32]) -> f32[16,32] {
  %input = f32[32,32]{1,0} parameter(0)
  ROOT %s = f32[16,32]{1,0} slice(%input), slice={[0:16], [0:32]}
}

ENTRY %main (g: f32[32,32]) -> f32[16,32] {
  %g = f32[32,32]{1,0} parameter(0)
  ROOT %fusion.5 = f32[16,32]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.3
}
"""
    assert hlo.program_stats(program).collectives == {"reduce-scatter": {"count": 1, "bytes": 16 * 32 * 4}}
