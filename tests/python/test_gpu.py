"""GPU tests of the gdn Python binding (a machine with an NVIDIA GPU and torch built with CUDA):

    python3 -m pytest -rs tests/python/test_gpu.py      or      python3 tests/python/test_gpu.py

- parity of the cuda backend with the float64 reference backend (every activation and state
  dtype, both layouts, padding rows, out-of-range slots, strided inputs, write slots), for
  gdn.decode and for multi-token gdn.decode_tokens (token_slots, num_accepted, varlen);
- gdn.decode_tokens with token_slots and num_accepted in a CUDA graph, replayed after a rollback;
- one CUDA graph holding 3 GDN layers x 64 decode steps of a padded batch, replayed and
  compared with the same calls run eagerly (and with the reference);
- if FLA is installed: gdn against fla.ops.gated_delta_rule.fused_recurrent_gated_delta_rule
  on the same inputs, and gdn.compat's wrapper against FLA with the same keyword arguments
  (one token, T = 4, varlen);
  if FlashInfer is installed: gdn.compat's wrapper against FlashInfer's;
- torch.compile (inductor, fullgraph): a caller of gdn.decode, and one of the custom operator
  torch.ops.gdn.decode_ (gdn.torch_ops);
- gdn.forward on cuda: short varlen sequences against the reference backend, with either form
  of the gates and with has_initial_state, and the library's refusal of more than 16 tokens with
  nothing written.
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
    """On cuda the indices stay on the device: a row whose slot is >= num_slots writes nothing,
    and checked mode (bad_index_rows) counts it."""
    torch = cuda_torch()
    rng = new_rng()
    problem = Problem(rng, 4, 2, 4, 128, 128, 4)
    acts, params, pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    slots = torch.tensor([1, 7, 0, 4], device="cuda")
    out = torch.full_like(acts[2], float("nan"))
    before = pool.clone()
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")  # checked mode: counts the skipped rows
    gdn.decode(*acts, *params, pool, slots, out=out, bad_index_rows=counter)
    torch.cuda.synchronize()
    assert int(counter.item()) == 2, f"bad_index_rows = {int(counter.item())}, want 2"
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


FIRST_CALL_IN_CAPTURE = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import gdn  # loading the library makes no CUDA call; the first gdn_decode probes the devices
n, h, hv, k, v = 4, 2, 4, 128, 128
gen = torch.Generator(device="cuda").manual_seed(7)
def r(*s): return torch.randn(*s, generator=gen, device="cuda").to(torch.bfloat16)
q, kk, vv, a, b = r(n, h, k), r(n, h, k), r(n, hv, v), r(n, hv), r(n, hv)
A_log, dt_bias = torch.zeros(hv, device="cuda"), torch.zeros(hv, device="cuda")
pool = torch.randn(6, hv, v, k, generator=gen, device="cuda") * 0.05
start, slots, out = pool.clone(), torch.tensor([1, 3, -1, 0], device="cuda"), torch.empty_like(vv)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):  # capture_error_mode="global", torch's default, as engines use
    gdn.decode(q, kk, vv, a, b, A_log, dt_bias, pool, slots, out=out)
pool.copy_(start)
graph.replay()
eager_pool, eager_out = start.clone(), torch.empty_like(vv)
gdn.decode(q, kk, vv, a, b, A_log, dt_bias, eager_pool, slots, out=eager_out)
torch.cuda.synchronize()
assert torch.equal(out, eager_out) and torch.equal(pool, eager_pool), "replay differs from the eager call"
print("first gdn call inside a graph capture: replay equals the eager call")
"""


def test_first_call_inside_graph_capture():
    """A fresh process whose very first gdn call is inside torch.cuda.graph (global capture
    mode): libgdn's static CUDA runtime initialises under relaxed capture mode, so the capture
    survives and the replay equals an eager call."""
    cuda_torch()
    import subprocess

    package = str(Path(__file__).resolve().parents[2] / "python")
    done = subprocess.run([sys.executable, "-c", FIRST_CALL_IN_CAPTURE, package], capture_output=True, text=True,
                          timeout=120)
    print("    " + (done.stdout.strip() or done.stderr.strip()[-2000:]))
    assert done.returncode == 0, done.stderr[-2000:]


def reference_tokens(acts, params, pool, **indices):
    """(out, pool after) of decode_tokens on the float64 reference backend, on host copies of the
    GPU tensors' values (indices and options as keywords); out rows no sequence owns are NaN."""
    pool64 = host64(pool)
    acts64 = [host64(x) for x in acts]
    out = np.full(acts64[2].shape, np.nan)
    host = {name: x.cpu() if hasattr(x, "cpu") else x for name, x in indices.items()}
    gdn.decode_tokens(*acts64, *(p.cpu() for p in params), pool64, out=out, backend="reference", **host)
    return out, pool64


def check_tokens_step(torch, name, acts, params, pool, act, state, **indices):
    """decode_tokens on cuda into a NaN-poisoned out against the reference backend: the same rows
    written, the outputs and the whole pool within tolerance. Updates pool; returns the errors."""
    ref_out, ref_pool = reference_tokens(acts, params, pool, **indices)
    out = torch.full_like(acts[2], float("nan"))
    gdn.decode_tokens(*acts, *params, pool, out=out, backend="cuda", **indices)
    torch.cuda.synchronize()
    written = ~np.isnan(ref_out)
    got = host64(out)
    assert np.array_equal(~np.isnan(got), written), f"{name}: output rows written other than the reference's"
    out_err = rel_err(got[written], ref_out[written])
    assert out_err <= OUT_TOL[act], f"{name}: out error {out_err:.2e}"
    return out_err, check_state(name, pool, ref_pool, state)


def test_cuda_decode_tokens_matches_reference():
    """Multi-token decode on cuda against the reference backend: fixed T with token_slots (some
    -1) and a padding row, then num_accepted rollback from those snapshots, then varlen with a
    zero-token sequence; every activation and state dtype, both layouts, the fast path (vk,
    K = 128) and the generic kernels."""
    torch = cuda_torch()
    rng = new_rng()
    shapes = [(3, 4, 8, 128, 128), (5, 2, 6, 48, 80), (2, 16, 32, 128, 128)]
    tokens = 4
    for act in ("float32", "bfloat16"):
        for state in ("float32", "bfloat16"):
            for layout in ("vk", "kv"):
                for n, h, hv, k, v in shapes:
                    num_slots = n * (tokens + 1) + 2
                    problem = Problem(rng, n * tokens, h, hv, k, v, num_slots, layout=layout)
                    acts, params, pool = on_gpu(torch, problem, getattr(torch, act), getattr(torch, state))
                    fixed = [x.unflatten(0, (n, tokens)) for x in acts]
                    own = torch.arange(n, device="cuda")
                    own[-1] = -1  # a padding row
                    table = (n + torch.arange(n * tokens, device="cuda")).view(n, tokens)
                    table[0, 1] = -1
                    table[:, 0] = own  # column 0: the sequence's own slot, as engines lay it out
                    name = f"{act}/{state}/{layout} N={n} K={k} V={v}"
                    before = pool.clone()
                    errors = [check_tokens_step(torch, name + " step 1", fixed, params, pool, act, state,
                                                slot_indices=own, token_slots=table, layout=layout)]
                    unused = list(range(n * (tokens + 1), num_slots))
                    assert torch.equal(pool[unused], before[unused]), "slots of no token changed"
                    # the next step starts from the state after num_accepted tokens of this one
                    # (row 0 picks a padding row where it accepts 2 tokens: its column 1 is -1)
                    accepted = torch.from_numpy(rng.integers(1, tokens + 1, n)).cuda()
                    step2 = Problem(rng, n * tokens, h, hv, k, v, 1)
                    acts2 = [torch.from_numpy(x).to("cuda", getattr(torch, act)).unflatten(0, (n, tokens))
                             for x in (step2.q, step2.k, step2.v, step2.a, step2.b)]
                    errors.append(check_tokens_step(torch, name + " step 2", acts2, params, pool, act, state,
                                                    token_slots=table, num_accepted=accepted, layout=layout))
                    # varlen: token rows with cu_seqlens, a sequence without tokens, int32 indices
                    lengths = rng.integers(1, tokens + 1, n)
                    lengths[n // 2] = 0
                    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).to("cuda", torch.int32)
                    rows = int(lengths.sum())
                    errors.append(check_tokens_step(torch, name + " varlen", [x[:rows] for x in acts], params, pool,
                                                    act, state, slot_indices=own.to(torch.int32), cu_seqlens=cu,
                                                    num_tokens=tokens, layout=layout))
                out_err, state_err = max(e[0] for e in errors), max(e[1] for e in errors)
                print(f"    act {act:8s} state {state:8s} {layout}: max out {out_err:.1e} state {state_err:.1e}")


def reference_forward(acts, params, pool, gates=None, **options):
    """(out, pool after) of gdn.forward on the float64 reference backend, on host copies of the
    GPU tensors' values; gates = (g, beta) replaces a, b, A_log, dt_bias."""
    pool64 = host64(pool)
    acts64 = [host64(x) for x in acts]
    out = np.full(acts64[2].shape, np.nan)
    host = {name: x.cpu() if hasattr(x, "cpu") else x for name, x in options.items()}
    if gates is None:
        gdn.forward(*acts64, *(p.cpu() for p in params), pool64, out=out, backend="reference", **host)
    else:
        g, beta = gates
        gdn.forward(*acts64[:3], None, None, None, None, pool64, out=out, backend="reference",
                    g=g.cpu().numpy(), beta=host64(beta), **host)
    return out, pool64


def test_cuda_forward_short_sequences_and_refusals():
    """gdn.forward on cuda (gdn 0.5.1): varlen sequences of up to 16 tokens against the reference
    backend (max_seqlen given: no host read of cu_seqlens), with the gates as a, b, A_log, dt_bias
    and precomputed (g, beta), and with has_initial_state; a longer sequence with the kv layout is
    refused by the library with GdnArgumentError and its message, nothing written;
    compat.chunk_gated_delta_rule with in-kernel gates on short sequences."""
    torch = cuda_torch()
    rng = new_rng()
    lengths = np.array([1, 16, 0, 5, 9])
    n, rows = len(lengths), int(lengths.sum())
    problem = Problem(rng, rows, 2, 4, 128, 128, n + 2)
    acts, params, pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).cuda()
    slots = torch.tensor([5, 0, 6, -1, 2], device="cuda")
    # g and beta as a model's gate kernel hands them over: g float32, beta in the activation dtype
    A_log, dt_bias = params
    g = -torch.exp(A_log) * torch.nn.functional.softplus(acts[3].float() + dt_bias)
    beta = torch.sigmoid(acts[4].float()).to(torch.bfloat16)
    flags = torch.tensor([True, False, True, True, False], device="cuda")
    for name, gates, extra in (("a, b", None, {}), ("g, beta", (g, beta), {}),
                               ("has_initial_state", None, {"has_initial_state": flags}),
                               ("g, beta, has_initial_state", (g, beta), {"has_initial_state": flags})):
        ref_out, ref_pool = reference_forward(acts, params, pool, gates, cu_seqlens=cu, slot_indices=slots,
                                              max_seqlen=16, **extra)
        out = torch.full_like(acts[2], float("nan"))
        if gates is None:
            gdn.forward(*acts, *params, pool, cu_seqlens=cu, slot_indices=slots, out=out, max_seqlen=16, **extra)
        else:
            gdn.forward(*acts[:3], None, None, None, None, pool, cu_seqlens=cu, slot_indices=slots, out=out,
                        g=gates[0], beta=gates[1], max_seqlen=16, **extra)
        torch.cuda.synchronize()
        got = host64(out)
        assert np.isfinite(got).all() and np.all(got[cu[3].item():cu[4].item()] == 0), name
        error = rel_err(got, ref_out)
        assert error <= OUT_TOL["bfloat16"], f"forward on cuda ({name}): out error {error:.2e}"
        check_state(f"forward on cuda ({name})", pool, ref_pool, "float32")
        print(f"    forward on cuda ({name}): out error {error:.1e}")
    # sequences of more than 16 tokens run in chunks for the vk layout with K = 128 (gdn 0.6):
    # the kv layout is refused by the library, nothing written
    long_cu = torch.tensor([0, 20, rows], device="cuda")
    before, poisoned = pool.clone(), torch.full_like(acts[2], float("nan"))
    try:
        gdn.forward(*acts, *params, pool, cu_seqlens=long_cu, slot_indices=slots[:2], out=poisoned, layout="kv")
    except gdn.GdnArgumentError as error:
        assert "chunked prefill" in str(error), str(error)
        print(f"    refused (long, kv): {error.message}")
    else:
        raise AssertionError("long: the cuda backend took a kv sequence of 20 tokens")
    torch.cuda.synchronize()
    assert torch.equal(pool, before) and torch.isnan(poisoned).all(), "long: something was written"
    # FLA's chunk_gated_delta_rule with in-kernel gates (what the cuda backend reads): one sequence of 16
    h0 = torch.randn(1, 4, 128, 128, device="cuda") * 0.05
    q, k, v, a, b = (x[None, 1:17] for x in acts)
    o, state = gdn.compat.chunk_gated_delta_rule(q, k, v, a, b, initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                                                 A_log=params[0], dt_bias=params[1], use_beta_sigmoid_in_kernel=True)
    pool_kv = h0.clone()
    expected = gdn.forward(*(x[0] for x in (q, k, v, a, b)), *params, pool_kv, cu_seqlens=torch.tensor([0, 16]).cuda(),
                           slot_indices=torch.zeros(1, dtype=torch.int64, device="cuda"), layout="kv", max_seqlen=16)
    torch.cuda.synchronize()
    assert torch.equal(o[0], expected) and torch.equal(state, pool_kv)


def test_cuda_forward_long_sequences():
    """gdn.forward on cuda with sequences of more than 16 tokens (gdn 0.6, the chunked kernel)
    mixed with decodes and verifies in one call, against the float64 reference: bf16 activations
    (one-term bf16 products: within 1.5e-2 for the outputs, 1e-2 for the state, as the C suite's
    GDN_TC_* limits) and f32 activations (three-term products: the library's f32 output tolerance, 1e-4 for the state); one
    graph-captured call gives the eager result; compat.chunk_gated_delta_rule with FLA's default
    [N, HV, K, V] state (run on a transposed copy) against the same call on the cpu backend."""
    torch = cuda_torch()
    rng = new_rng()
    lengths = np.array([300, 1, 0, 70, 16, 17, 129])
    n, rows = len(lengths), int(lengths.sum())
    problem = Problem(rng, rows, 2, 4, 128, 128, n + 2)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).cuda()
    slots = torch.tensor([5, 0, 6, -1, 2, 3, 8], device="cuda")
    for act, out_tol, state_tol in ((torch.bfloat16, 1.5e-2, 1e-2), (torch.float32, OUT_TOL["float32"], 1e-4)):
        acts, params, pool = on_gpu(torch, problem, act, torch.float32)
        ref_out, ref_pool = reference_forward(acts, params, pool, cu_seqlens=cu, slot_indices=slots, max_seqlen=300)
        out = torch.full_like(acts[2], float("nan"))
        gdn.forward(*acts, *params, pool, cu_seqlens=cu, slot_indices=slots, out=out, max_seqlen=300)
        torch.cuda.synchronize()
        got = host64(out)
        assert np.isfinite(got).all(), f"{act}: outputs not all written"
        out_error, state_error = rel_err(got, ref_out), rel_err(host64(pool), ref_pool)
        print(f"    long sequences on cuda ({act}): out error {out_error:.1e}, state error {state_error:.1e}")
        assert out_error <= out_tol and state_error <= state_tol, (act, out_error, state_error)
    # a captured call replays what the eager call computed
    acts, params, start = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    eager_pool, eager_out = start.clone(), torch.empty_like(acts[2])
    gdn.forward(*acts, *params, eager_pool, cu_seqlens=cu, slot_indices=slots, out=eager_out, max_seqlen=300)
    graph_pool, graph_out = start.clone(), torch.empty_like(acts[2])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        gdn.forward(*acts, *params, graph_pool, cu_seqlens=cu, slot_indices=slots, out=graph_out, max_seqlen=300)
    graph_pool.copy_(start)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graph_out, eager_out) and torch.equal(graph_pool, eager_pool), "graph replay differs"
    # FLA's chunk call with its default [N, HV, K, V] initial state, cuda against cpu
    h0 = torch.randn(1, 4, 128, 128, device="cuda") * 0.05
    q, k, v = (x[None, :300] for x in acts[:3])
    A_log, dt_bias = params
    g = -torch.exp(A_log) * torch.nn.functional.softplus(acts[3][None, :300].float() + dt_bias)
    beta = torch.sigmoid(acts[4][None, :300].float())
    o, state = gdn.compat.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True)
    o_cpu, state_cpu = gdn.compat.chunk_gated_delta_rule(*(x.cpu() for x in (q, k, v, g, beta)),
                                                         initial_state=h0.cpu(), output_final_state=True,
                                                         use_qk_l2norm_in_kernel=True)
    torch.cuda.synchronize()
    o_error, s_error = rel_err(host64(o), host64(o_cpu)), rel_err(host64(state), host64(state_cpu))
    print(f"    compat chunk (kv state) cuda vs cpu: out {o_error:.1e}, state {s_error:.1e}")
    assert state.shape == h0.shape and o_error <= 1.5e-2 and s_error <= 1e-2, (o_error, s_error)


def test_cuda_graph_decode_tokens():
    """decode_tokens with token_slots and num_accepted captured in a CUDA graph: replays give the
    eager results (the indices are read by the kernel, so a replay sees their new values)."""
    torch = cuda_torch()
    rng = new_rng()
    n, tokens, h, hv, k, v = 4, 3, 4, 8, 128, 128
    problem = Problem(rng, n * tokens, h, hv, k, v, n * tokens + 1)
    acts, params, initial = on_gpu(torch, problem, torch.bfloat16, torch.float32)
    acts = [x.unflatten(0, (n, tokens)) for x in acts]
    table = torch.arange(n * tokens, device="cuda").view(n, tokens)
    accepted = torch.ones(n, dtype=torch.int64, device="cuda")

    def step(pool, out):
        gdn.decode_tokens(*acts, *params, pool, out=out, token_slots=table, num_accepted=accepted)

    eager_pool, eager_out = initial.clone(), torch.empty_like(acts[2])
    step(eager_pool, eager_out)
    graph_pool, graph_out = initial.clone(), torch.full_like(acts[2], float("nan"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(graph_pool, graph_out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(graph_pool, graph_out)
    graph_pool.copy_(initial)
    graph_out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graph_out, eager_out) and torch.equal(graph_pool, eager_pool)
    # roll back: the next replay starts from the state after token 2 of sequence n (column 1)
    accepted.fill_(2)
    eager_pool2 = graph_pool.clone()
    graph.replay()
    gdn.decode_tokens(*acts, *params, eager_pool2, out=eager_out, token_slots=table, num_accepted=accepted)
    torch.cuda.synchronize()
    assert torch.equal(graph_out, eager_out) and torch.equal(graph_pool, eager_pool2)

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
    (FLA's in-kernel gate and beta sigmoid, state_v_first), when this FLA has them: one token,
    T = 4 tokens per sequence, and varlen (cu_seqlens) with sequences of 1..6 tokens."""
    torch = cuda_torch()
    fla = fla_function()
    needed = {"use_gate_in_kernel", "use_beta_sigmoid_in_kernel", "A_log", "dt_bias", "state_v_first"}
    missing = needed - set(inspect.signature(fla).parameters)
    if missing:
        skip(f"this FLA's fused_recurrent_gated_delta_rule has no {sorted(missing)} (FLA >= 0.5.1 has them)")
    rng = new_rng()
    n, h, hv, k, v = 8, 2, 6, 128, 128
    lengths = rng.integers(1, 7, n)
    cases = [("T=1", 1, None), ("T=4", 4, None),
             ("varlen", None, torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).cuda())]
    for name, tokens, cu in cases:
        rows = n * tokens if cu is None else int(lengths.sum())
        problem = Problem(rng, rows, h, hv, k, v, n)
        (q, kk, vv, a, b), (A_log, dt_bias), pool = on_gpu(torch, problem, torch.bfloat16, torch.float32)
        if cu is None:
            shaped = [x.unflatten(0, (n, tokens)) for x in (q, kk, vv, a, b)]
        else:
            shaped = [x[None] for x in (q, kk, vv, a, b)]
        kwargs = dict(g=shaped[3], beta=shaped[4], A_log=A_log, dt_bias=dt_bias, use_gate_in_kernel=True,
                      use_beta_sigmoid_in_kernel=True, state_v_first=True, initial_state=pool,
                      output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
        o_fla, state_fla = fla(*shaped[:3], **kwargs)
        o_gdn, state_gdn = gdn.compat.fused_recurrent_gated_delta_rule(*shaped[:3], **kwargs)
        torch.cuda.synchronize()
        out_err, state_err = max_rel(o_gdn, o_fla), max_rel(state_gdn, state_fla)
        print(f"    compat vs FLA (same kwargs), {name}: out {out_err:.2e} state {state_err:.2e}")
        assert o_gdn.shape == o_fla.shape and state_gdn.shape == state_fla.shape
        assert out_err <= PEER_TOL and state_err <= PEER_TOL


def test_compat_wrapper_against_flashinfer():
    torch = cuda_torch()
    # Wheels installed with pip --target and put on PYTHONPATH have their .pth files skipped;
    # nvidia-cutlass-dsl needs its own (as in bench/peers/peer_bench.py), or FlashInfer imports
    # with its CuTe DSL kernels set to None.
    import os
    import site
    for path in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if path and os.path.isdir(path):
            site.addsitedir(path)
    try:
        import flashinfer.gdn_decode as flashinfer_gdn
        from flashinfer.gdn_decode import gated_delta_rule_decode_pretranspose as flashinfer_decode
    except ImportError as error:
        skip(f"FlashInfer is not installed ({error})")
    if getattr(flashinfer_gdn, "run_pretranspose_decode", True) is None:
        skip("FlashInfer imported without its CuTe DSL kernels (nvidia-cutlass-dsl not importable)")
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


def expect_compiled_equals_eager(torch, layer, acts, pool):
    """layer(*acts, pool) under torch.compile(fullgraph=True) gives the eager output and pool."""
    eager_pool, compiled_pool = pool.clone(), pool.clone()
    expected = layer(*acts, eager_pool)
    result = torch.compile(layer, fullgraph=True)(*acts, compiled_pool)
    torch.cuda.synchronize()
    assert torch.equal(result, expected) and torch.equal(compiled_pool, eager_pool)


def test_torch_compile_plain_caller():
    """torch.compile(fullgraph=True) of a function that calls gdn.decode: traced, gdn.decode
    becomes the custom operator torch.ops.gdn.decode_ (no graph break)."""
    torch = cuda_torch()
    acts, params, pool, slots = compile_problem(torch, new_rng())

    def layer(q, k, v, a, b, pool):
        out = gdn.decode(q * 1.0, k, v, a, b, *params, pool, slots)
        return out.float() * 2.0

    expect_compiled_equals_eager(torch, layer, acts, pool)


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

    expect_compiled_equals_eager(torch, layer, acts, pool)


if __name__ == "__main__":
    run(globals())
