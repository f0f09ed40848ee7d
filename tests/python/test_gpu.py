"""GPU tests of the gdn Python binding (a machine with an NVIDIA GPU and torch built with CUDA):

    python3 -m pytest -rs tests/python/test_gpu.py      or      python3 tests/python/test_gpu.py

- parity of the cuda backend with the float64 reference backend (every activation and state
  dtype, both layouts, padding rows, out-of-range slots, strided inputs, write slots);
- one CUDA graph holding 3 GDN layers x 64 decode steps of a padded batch, replayed and
  compared with the same calls run eagerly (and with the reference);
- if FLA is installed: gdn against fla.ops.gated_delta_rule.fused_recurrent_gated_delta_rule
  on the same inputs, and gdn.compat's wrapper against FLA with the same keyword arguments;
  if FlashInfer is installed: gdn.compat's wrapper against FlashInfer's;
- torch.compile (inductor, fullgraph): a caller of gdn.decode, and one of the custom operator
  torch.ops.gdn.decode_ (gdn.torch_ops).
Everything skips, with the reason, where torch, CUDA or a peer library is missing.
"""
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gdn_testlib import (Problem, bf16_round, import_gdn, new_rng, reference_decode, rel_err,  # noqa: E402
                         require_torch, run, skip)

import numpy as np  # noqa: E402

gdn = import_gdn()

OUT_TOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}  # as the C suite (tools/decode_case.c)
PEER_TOL = 1e-2  # max |gdn - peer| / max |peer| with bf16 activations


def cuda_torch():
    torch = require_torch()
    if not torch.cuda.is_available():
        skip("torch sees no CUDA device")
    if gdn.cuda_device_count() == 0:
        skip("libgdn has no usable CUDA device (built without nvcc, or no sm_80+ GPU)")
    return torch


def on_gpu(torch, problem, act_dtype, state_dtype):
    """(activations, (A_log, dt_bias), pool) of a Problem on the GPU."""
    acts = [torch.from_numpy(x).to("cuda", act_dtype) for x in (problem.q, problem.k, problem.v, problem.a, problem.b)]
    params = (torch.from_numpy(problem.A_log).cuda(), torch.from_numpy(problem.dt_bias).cuda())
    return acts, params, torch.from_numpy(problem.pool).to("cuda", state_dtype)


def host64(tensor):
    return tensor.detach().double().cpu().numpy()


def reference_step(acts, params, pool, slots, write_slots=None, **options):
    """(out, pool after) of the float64 reference backend on the GPU tensors' values."""
    pool64 = host64(pool)
    out = gdn.decode(*(host64(x) for x in acts), *(p.cpu() for p in params), pool64, slots.cpu(),
                     write_slot_indices=None if write_slots is None else write_slots.cpu(), backend="reference",
                     **options)
    return out, pool64


def check_state(name, state, ref_pool, state_dtype_name):
    if state_dtype_name == "float32":
        error, limit = rel_err(host64(state), ref_pool), 1e-5
    else:  # within 2x of the drift of the reference state itself rounded to bf16 (SPEC 6)
        error, limit = rel_err(host64(state), ref_pool), 2 * rel_err(bf16_round(ref_pool), ref_pool) + 1e-6
    assert error <= limit, f"{name}: state error {error:.2e} > {limit:.2e}"
    return error


def test_devices():
    torch = cuda_torch()
    for device in range(gdn.cuda_device_count()):
        name, cc = gdn.cuda_device_info(device)
        print(f"    device {device}: {name}, sm_{cc[0]}{cc[1]}; torch {torch.__version__}, gdn {gdn.__version__}")


def test_cuda_matches_reference():
    torch = cuda_torch()
    rng = new_rng()
    # (N, H, HV, K, V, slots): Qwen3-Next TP1, the contest TP4 shape, Qwen3.5-27B's group of 3, odd sizes
    shapes = [(1, 16, 32, 128, 128, 3), (33, 4, 8, 128, 128, 40), (6, 16, 48, 128, 128, 8), (5, 3, 6, 48, 80, 9)]
    for act in ("float32", "float16", "bfloat16"):
        for state in ("float32", "bfloat16"):
            for layout in ("vk", "kv"):
                for n, h, hv, k, v, num_slots in shapes:
                    problem = Problem(rng, n, h, hv, k, v, num_slots, layout=layout)
                    acts, params, pool = on_gpu(torch, problem, getattr(torch, act), getattr(torch, state))
                    slots_np = rng.permutation(num_slots)[:n].astype(np.int64)
                    slots_np[rng.permutation(n)[:n // 4]] = -1
                    slots = torch.from_numpy(slots_np).cuda()
                    ref_out, ref_pool = reference_step(acts, params, pool, slots, layout=layout)
                    out = torch.full_like(acts[2], float("nan"))
                    before = pool.clone()
                    gdn.decode(*acts, *params, pool, slots, out=out, layout=layout, backend="cuda")
                    torch.cuda.synchronize()
                    assert torch.isfinite(out).all(), "some output element was not written"
                    out_err = rel_err(host64(out), ref_out)
                    assert out_err <= OUT_TOL[act], f"{act}/{state}/{layout} N={n}: out error {out_err:.2e}"
                    state_err = check_state(f"{act}/{state}/{layout} N={n}", pool, ref_pool, state)
                    assert (out[slots < 0] == 0).all()
                    unused = [s for s in range(num_slots) if s not in slots_np]
                    assert torch.equal(pool[unused], before[unused]), "slots of no sequence changed"
                print(f"    act {act:8s} state {state:8s} {layout}: last out {out_err:.1e} state {state_err:.1e}")


def test_cuda_out_of_range_slots_are_skipped():
    """On cuda the indices stay on the device: a row whose slot is >= num_slots writes nothing."""
    torch = cuda_torch()
    rng = new_rng()
    problem = Problem(rng, 4, 2, 4, 128, 128, 4)
    acts, params, pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    slots = torch.tensor([1, 7, 0, 4], device="cuda")
    out = torch.full_like(acts[2], float("nan"))
    before = pool.clone()
    gdn.decode(*acts, *params, pool, slots, out=out)
    torch.cuda.synchronize()
    assert torch.isnan(out[1]).all() and torch.isnan(out[3]).all(), "rows with slots >= num_slots were written"
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    assert torch.equal(pool[2:], before[2:])


def test_cuda_strided_inputs_write_slots_int32():
    torch = cuda_torch()
    rng = new_rng()
    n, h, hv, k, v = 6, 4, 8, 128, 128
    problem = Problem(rng, n, h, hv, k, v, 12)
    acts, params, pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    q, kk, vv, a, b = acts
    qkv = torch.cat([q.flatten(1), kk.flatten(1), vv.flatten(1)], dim=1)
    ba = torch.cat([b, a], dim=1)
    views = (qkv[:, :h * k].unflatten(1, (h, k)), qkv[:, h * k:2 * h * k].unflatten(1, (h, k)),
             qkv[:, 2 * h * k:].unflatten(1, (hv, v)), ba[:, hv:], ba[:, :hv])
    read = torch.tensor([0, 1, 2, -1, 3, 4], dtype=torch.int32, device="cuda")
    write = torch.tensor([6, 7, -1, 8, 9, 10], dtype=torch.int32, device="cuda")
    ref_out, ref_pool = reference_step(acts, params, pool, read, write)
    wide = torch.zeros(n, hv * v + 64, dtype=torch.bfloat16, device="cuda")
    out = wide[:, 32:32 + hv * v].unflatten(1, (hv, v))
    gdn.decode(*views, *params, pool, read, out=out, write_slot_indices=write)
    torch.cuda.synchronize()
    assert rel_err(host64(out), ref_out) <= OUT_TOL["bfloat16"]
    check_state("strided", pool, ref_pool, "float32")
    assert (wide[:, :32] == 0).all() and (wide[:, 32 + hv * v:] == 0).all(), "wrote outside out's rows"


def test_cuda_graph_three_layers_64_steps():
    """One graph: 64 steps x 3 layers, each layer with its own pool, a batch of 8 rows of which 3
    are padding. Replayed twice from the same initial pools; compared with eager calls."""
    torch = cuda_torch()
    rng = new_rng()
    layers, steps, n, h, hv, k, v, num_slots = 3, 64, 8, 4, 8, 128, 128, 12
    gen = torch.Generator(device="cuda").manual_seed(int(rng.integers(1 << 30)))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    q, kk, a, b = randn(layers, steps, n, h, k), randn(layers, steps, n, h, k), randn(layers, steps, n, hv), \
        randn(layers, steps, n, hv)
    vv = randn(layers, steps, n, hv, v)
    params = [Problem(rng, 1, 1, hv, 8, 8, 1) for _ in range(layers)]  # only A_log, dt_bias are used
    A_log = [torch.from_numpy(p.A_log).cuda() for p in params]
    dt_bias = [torch.from_numpy(p.dt_bias).cuda() for p in params]
    initial = [torch.randn(num_slots, hv, v, k, generator=gen, device="cuda") * 0.05 for _ in range(layers)]
    slots = torch.tensor([3, -1, 0, 7, -1, 5, 11, -1], device="cuda")

    def decode_all(pools, outs):
        for s in range(steps):
            for layer in range(layers):
                gdn.decode(q[layer, s], kk[layer, s], vv[layer, s], a[layer, s], b[layer, s], A_log[layer],
                           dt_bias[layer], pools[layer], slots, out=outs[layer, s])

    eager_pools = [p.clone() for p in initial]
    eager_outs = torch.empty(layers, steps, n, hv, v, dtype=torch.bfloat16, device="cuda")
    decode_all(eager_pools, eager_outs)

    graph_pools = [p.clone() for p in initial]
    graph_outs = torch.full_like(eager_outs, float("nan"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        decode_all(graph_pools, graph_outs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_all(graph_pools, graph_outs)
    for replay in range(2):
        for pool, start in zip(graph_pools, initial):
            pool.copy_(start)
        graph_outs.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        out_diff = (graph_outs.float() - eager_outs.float()).abs().max().item()
        state_diff = max((g - e).abs().max().item() for g, e in zip(graph_pools, eager_pools))
        print(f"    replay {replay}: max |graph - eager| out {out_diff:.1e} state {state_diff:.1e}")
        assert torch.equal(graph_outs, eager_outs) and all(torch.equal(g, e) for g, e in zip(graph_pools,
                                                                                            eager_pools)), \
            "graph replay differs from the eager calls"
    padding = slots < 0
    assert (graph_outs[:, :, padding] == 0).all(), "padding rows must be zeros"
    unused = [s for s in range(num_slots) if s not in slots.tolist()]
    assert all(torch.equal(p[unused], i[unused]) for p, i in zip(graph_pools, initial))
    # and the eager 64 steps of layer 0 against the float64 reference, step by step
    ref_pool = host64(initial[0])
    for s in range(steps):
        acts = [host64(x[0, s]) for x in (q, kk, vv, a, b)]
        ref_out, ref_pool = reference_decode(*acts, A_log[0].cpu().numpy(), dt_bias[0].cpu().numpy(), ref_pool,
                                             slots.cpu().numpy())
        assert rel_err(host64(eager_outs[0, s]), ref_out) <= OUT_TOL["bfloat16"], f"step {s}"
    check_state("layer 0 after 64 steps", eager_pools[0], ref_pool, "float32")


def fla_function():
    try:
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    except ImportError as error:
        skip(f"FLA is not installed ({error}); pip install flash-linear-attention")
    return fused_recurrent_gated_delta_rule


def max_rel(x, ref):
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def test_parity_with_fla():
    torch = cuda_torch()
    fla = fla_function()
    rng = new_rng()
    n, h, hv, k, v = 16, 4, 8, 128, 128
    problem = Problem(rng, n, h, hv, k, v, n, layout="kv")
    (q, kk, vv, a, b), (A_log, dt_bias), pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    # FLA's classic interface: g and beta precomputed (float32) from the same bf16 a, b.
    g = -A_log.exp() * torch.nn.functional.softplus(a.float() + dt_bias)
    beta = b.float().sigmoid()
    o_fla, state_fla = fla(q[:, None], kk[:, None], vv[:, None], g=g[:, None], beta=beta[:, None],
                           initial_state=pool.clone(), output_final_state=True, use_qk_l2norm_in_kernel=True)
    out = gdn.decode(q, kk, vv, a, b, A_log, dt_bias, pool, torch.arange(n, device="cuda"), layout="kv")
    torch.cuda.synchronize()
    out_err, state_err = max_rel(out, o_fla[:, 0]), max_rel(pool, state_fla)
    print(f"    gdn vs FLA: out {out_err:.2e} state {state_err:.2e} (max relative)")
    assert out_err <= PEER_TOL and state_err <= PEER_TOL


def test_compat_wrapper_against_fla_itself():
    """gdn.compat.fused_recurrent_gated_delta_rule and FLA, called with the same keyword arguments
    (FLA's in-kernel gate and beta sigmoid, state_v_first), when this FLA has them."""
    torch = cuda_torch()
    fla = fla_function()
    needed = {"use_gate_in_kernel", "use_beta_sigmoid_in_kernel", "A_log", "dt_bias", "state_v_first"}
    missing = needed - set(inspect.signature(fla).parameters)
    if missing:
        skip(f"this FLA's fused_recurrent_gated_delta_rule has no {sorted(missing)} (FLA >= 0.5.1 has them)")
    rng = new_rng()
    n, h, hv, k, v = 8, 2, 6, 128, 128
    problem = Problem(rng, n, h, hv, k, v, n)
    (q, kk, vv, a, b), (A_log, dt_bias), pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    kwargs = dict(g=a[:, None], beta=b[:, None], A_log=A_log, dt_bias=dt_bias, use_gate_in_kernel=True,
                  use_beta_sigmoid_in_kernel=True, state_v_first=True, initial_state=pool,
                  output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_fla, state_fla = fla(q[:, None], kk[:, None], vv[:, None], **kwargs)
    o_gdn, state_gdn = gdn.compat.fused_recurrent_gated_delta_rule(q[:, None], kk[:, None], vv[:, None], **kwargs)
    torch.cuda.synchronize()
    out_err, state_err = max_rel(o_gdn, o_fla), max_rel(state_gdn, state_fla)
    print(f"    compat vs FLA (same kwargs): out {out_err:.2e} state {state_err:.2e}")
    assert o_gdn.shape == o_fla.shape and state_gdn.shape == state_fla.shape
    assert out_err <= PEER_TOL and state_err <= PEER_TOL


def test_compat_wrapper_against_flashinfer():
    torch = cuda_torch()
    try:
        from flashinfer.gdn_decode import gated_delta_rule_decode_pretranspose as flashinfer_decode
    except ImportError as error:
        skip(f"FlashInfer is not installed ({error})")
    if torch.cuda.get_device_capability()[0] < 9:
        skip("FlashInfer's GDN decode needs sm_90+")
    rng = new_rng()
    n, h, hv, k, v, num_slots = 8, 4, 8, 128, 128, 10
    problem = Problem(rng, n, h, hv, k, v, num_slots)
    acts, (A_log, dt_bias), pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    q, kk, vv, a, b = (x[:, None] for x in acts)
    # No padding rows: FlashInfer's paths disagree on them (python/README.md), gdn writes zeros.
    indices = torch.tensor([4, 0, 9, 1, 2, 3, 5, 6], dtype=torch.int32, device="cuda")
    pool_fi, pool_gdn = pool.clone(), pool.clone()
    o_fi, _ = flashinfer_decode(q, kk, vv, None, A_log, a, dt_bias, b, initial_state=pool_fi,
                                initial_state_indices=indices)
    o_gdn, _ = gdn.compat.gated_delta_rule_decode_pretranspose(q, kk, vv, None, A_log, a, dt_bias, b,
                                                               initial_state=pool_gdn, initial_state_indices=indices)
    torch.cuda.synchronize()
    out_err, state_err = max_rel(o_gdn, o_fi), max_rel(pool_gdn, pool_fi)
    print(f"    compat vs FlashInfer: out {out_err:.2e} state {state_err:.2e}")
    assert o_gdn.shape == o_fi.shape and out_err <= PEER_TOL and state_err <= PEER_TOL


def compile_problem(torch, rng):
    problem = Problem(rng, 8, 4, 8, 128, 128, 10)
    acts, params, pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    slots = torch.tensor([0, 3, -1, 9, 4, 1, -1, 2], device="cuda")
    return acts, params, pool, slots


def test_torch_compile_plain_caller():
    """torch.compile(fullgraph=True) of a function that calls gdn.decode: traced, gdn.decode
    becomes the custom operator torch.ops.gdn.decode_ (no graph break)."""
    torch = cuda_torch()
    acts, params, pool, slots = compile_problem(torch, new_rng())

    def layer(q, k, v, a, b, pool):
        out = gdn.decode(q * 1.0, k, v, a, b, *params, pool, slots)
        return out.float() * 2.0

    eager_pool, compiled_pool = pool.clone(), pool.clone()
    expected = layer(*acts, eager_pool)
    result = torch.compile(layer, fullgraph=True)(*acts, compiled_pool)
    torch.cuda.synchronize()
    assert torch.equal(result, expected) and torch.equal(compiled_pool, eager_pool)


def test_torch_compile_custom_op():
    """torch.ops.gdn.decode_ (gdn.torch_ops) inside torch.compile(fullgraph=True), inductor."""
    torch = cuda_torch()
    if not hasattr(torch.library, "custom_op"):
        skip(f"torch {torch.__version__} has no torch.library.custom_op")
    import gdn.torch_ops  # noqa: F401

    acts, params, pool, slots = compile_problem(torch, new_rng())

    def layer(q, k, v, a, b, pool):
        out = torch.empty_like(v)
        torch.ops.gdn.decode_(q * 1.0, k, v, a, b, *params, pool, slots, out)
        return out.float() * 2.0

    eager_pool, compiled_pool = pool.clone(), pool.clone()
    expected = layer(*acts, eager_pool)
    result = torch.compile(layer, fullgraph=True)(*acts, compiled_pool)
    torch.cuda.synchronize()
    assert torch.equal(result, expected) and torch.equal(compiled_pool, eager_pool)


if __name__ == "__main__":
    run(globals())
