"""bench/step_kernels.py: a profiler trace's kernels named into categories and split into identical
steps (the GPU recording itself runs in `cross bench model --kernel-times` on the device)."""

import pytest

from cross.bench.step_kernels import OTHER, WGMMA24, category, describe, per_step, short_name, trace_kernels


def test_kernel_names_fall_into_their_categories():
    assert category("wgmma24") == WGMMA24
    assert category("row_gemv") == "row kernel"
    assert category("plan_matmul") == "tile kernels"
    assert category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64") == "cuBLAS"
    assert category("nvjet_hsh_64x8_64x16_2x1_v_bz_splitK_TNT") == "cuBLAS"
    assert category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128>>") == "attention"
    assert category("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "inductor"
    # inductor names a kernel after the ops it fuses, the custom op it feeds among them
    assert category("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_wgmma24_linear_3") == "inductor"
    assert category("void at::native::vectorized_elementwise_kernel<4>") == OTHER


def _trace(steps):
    """A Chrome trace of steps, each a list of (name, duration us), kernels 1 us apart, steps 50 us apart,
    with a CPU event and an unordered listing as torch.profiler may write them."""
    events, t = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5}], 0.0
    for step in steps:
        for name, dur in step:
            events.append({"ph": "X", "cat": "kernel", "name": name, "ts": t, "dur": dur})
            t += dur + 1
        t += 50
    return {"traceEvents": events[::-1]}


def test_steps_are_split_and_summed_per_category():
    step = [("triton_poi_fused_0", 2.0), ("wgmma24", 10.0), ("wgmma24", 20.0),
            ("triton_poi_fused_1", 2.0), ("wgmma24", 12.0), ("wgmma24", 22.0)]  # two layers of two launches
    second = [(n, d + 2.0) for n, d in step]  # a slower step: medians of the two
    kernels = trace_kernels(_trace([step, second]))
    assert [k[0] for k in kernels] == [n for n, _ in step + second]  # in start order, no CPU events
    s = per_step(kernels, 2, layers=2)
    assert s["launches"] == 6
    assert s["categories"][WGMMA24] == [4, pytest.approx((11 + 21 + 13 + 23) / 1e3)]
    assert s["categories"]["inductor"] == [2, pytest.approx(6 / 1e3)]
    assert s["busy"] == pytest.approx((11 + 21 + 13 + 23 + 6) / 1e3)
    assert s["span"] == pytest.approx(((68 + 5) + (80 + 5)) / 2 / 1e3)  # kernels and the 1 us gaps, median
    # first and second launch of each layer: medians over both layers and both steps
    assert s["positions"] == [(0, 2, pytest.approx(12.0), "wgmma24"), (1, 2, pytest.approx(22.0), "wgmma24")]
    line = describe(s)
    assert line.startswith("6 kernels, 0.074 ms of kernels") and "warpgroup 2:4 0.068 ms (4 launches)" in line
    assert line.endswith("warpgroup 2:4 by the launch's place in a layer: 1. 12.00 us (wgmma24), 2. 22.00 us (wgmma24)")
    three = per_step(kernels, 2, layers=3)  # 4 launches over 3 layers: one a layer, one past them (a head)
    assert three["positions"] == [(0, 3, pytest.approx(13.0), "wgmma24")] and three["past_layers"] == 1
    assert describe(three).endswith("1. 13.00 us (wgmma24) (and 1 after the layers)")
    assert "positions" not in per_step(kernels, 2, layers=5)  # fewer launches than layers
    fused = per_step(kernels, 2, layers=2, by_place="inductor")  # another category by place
    assert fused["positions"] == [(0, 2, pytest.approx(3.0), "triton_poi_fused_0")]  # the first of a tie
    assert "inductor by the launch's place" in describe(fused)


def test_short_names_drop_types_namespaces_and_templates():
    assert short_name("void at::native::vectorized_elementwise_kernel<4, Foo>(int, Bar)") == (
        "vectorized_elementwise_kernel")
    assert short_name("nvjet_hsh_64x8_64x16_2x1_v_bz_splitK_TNT") == "nvjet_hsh_64x8_64x16_2x1_v_bz_splitK_TNT"
    reduce = "void cublasLt::splitKreduce_kernel<32, 16, int, float>(cublasLt::cublasSplitKParams<float>)"
    assert short_name(reduce) == "splitKreduce_kernel"
    assert short_name("x" * 50) == "x" * 37 + "..."


def test_steps_that_differ_are_refused():
    a, b = [("wgmma24", 1.0), ("gemm", 1.0)], [("gemm", 1.0), ("wgmma24", 1.0)]
    with pytest.raises(ValueError, match="different kernels"):
        per_step(trace_kernels(_trace([a, b])), 2)
    with pytest.raises(ValueError, match="do not split"):
        per_step(trace_kernels(_trace([a, a[:1]])), 2)
    with pytest.raises(ValueError, match="do not split"):
        per_step([], 1)


@pytest.mark.gpu
def test_gpu_a_steps_kernels_are_recorded():
    """On the GPU: the kernels of graph replays of a matmul and an add are recorded, in order, per step."""
    import torch

    from cross.bench.step_kernels import step_kernels

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    a = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
    kernels, how = step_kernels(lambda: (a @ a) + 1, reps=3)
    s = per_step(kernels, 3)
    assert how == "graph" and s["launches"] == 2
    assert s["categories"]["cuBLAS"][0] == 1 and s["busy"] <= s["span"] + 1e-6
