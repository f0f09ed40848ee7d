#!/usr/bin/env python3
"""Peer benchmark of the GDN decode step (SPEC 7): gdn beside FLA and FlashInfer on one GPU.

    python3 bench/peers/peer_bench.py --out DIR [--lib build/libgdn.so] [--quick]
    python3 bench/peers/peer_bench.py --cpu-selftest [--lib build/libgdn.so]
    python3 bench/peers/peer_bench.py --merge DIR1 DIR2 ... --out DIR

For every SPEC shape, state dtype (f32, bf16) and batch size N it times, the same way:
  gdn         libgdn's gdn_decode through ctypes (cuda backend, vk pool, int64 permuted slots)
  fla         fla.ops.gated_delta_rule.fused_recurrent_gated_delta_rule (Triton)
  flashinfer  flashinfer.gdn_decode.gated_delta_rule_decode_pretranspose (CuTe DSL)
  copy        torch copy_ of the same state bytes (the bandwidth the others are measured against)
Each is a CUDA graph of many calls that rotate over buffer sets larger than 4x L2 where memory
allows, replayed after a warm-up; the result is the median over replays of elapsed / calls.
In the same run: accuracy against a float64 torch reference of SPEC 1, and cold start (process
start to the first synchronized result) in fresh subprocesses.

Outputs in DIR: decode-h200.csv, decode-h200.md, decode-h200.png, decode-h200-notes.csv and
decode-h200.json (everything, for --merge of runs split over several device calls); --stem names
them for another device (decode-h100 for the earlier runs).
"""

import argparse
import collections
import ctypes
import importlib
import datetime
import json
import math
import os
import site
import statistics
import subprocess
import sys
import tempfile
import time


def _process_pth_files():
    """pip install --target + PYTHONPATH skips .pth files; nvidia-cutlass-dsl needs its own
    (it puts the `cutlass` package on sys.path), and without it FlashInfer imports but
    silently has no GDN kernels."""
    for path in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if path and os.path.isdir(path):
            site.addsitedir(path)


_process_pth_files()

torch = None  # imported in main() or in the cold-start child, which times the import


def load_torch():
    global torch
    import torch as _torch

    torch = _torch
    return torch


# ------------------------------------------------------------------------------------------
# What is measured
# ------------------------------------------------------------------------------------------

SHAPES = collections.OrderedDict(  # name: (H, HV, K, V), SPEC 7
    [
        ("qwen3-next", (16, 32, 128, 128)),
        ("qwen3.5-397b", (16, 64, 128, 128)),
        ("qwen3.5-27b", (16, 48, 128, 128)),
        ("contest", (4, 8, 128, 128)),
    ]
)
NS = (1, 4, 16, 64, 256, 1024)
STATES = ("f32", "bf16")
PEERS = ("gdn", "fla", "flashinfer")
IMPLS = PEERS + ("copy",)

ROTATION_BYTES = 256 << 20  # > 4x the 50 MB L2 of an H100: each call misses L2
MAX_SETS = 1024  # 1024 sets of the smallest pool (contest, bf16, N=1: 256 KiB) make 256 MiB
MIN_CALLS = 20  # calls per graph replay, at least
COPY_CHUNK = 128 << 20  # bytes per piece of the copy baseline (../shared/baselines/h200-2026-12-02)
CHECK_TOL = 1e-2  # max|x - ref| / max|ref| with bf16 activations (SPEC 6)
# Accuracy case: N = 5 rows, row 2 is padding; slot 0 stays unused because FlashInfer's bf16
# path uses it as its null slot; slots 2, 4, 6 are never named and must stay untouched.
CHECK_SLOTS = (5, 1, -1, 7, 3)
CHECK_NUM_SLOTS = 8
COLD_SHAPE, COLD_N, COLD_STATE = "qwen3-next", 16, "f32"
FILE_STEM = "decode-h200"  # --stem

LAYOUT_NOTE = {
    "gdn": "vk pool [slots,HV,V,K], int64 permuted slot indices, in place",
    "fla": "vk (state_v_first=True); no slot indices: a contiguous [N,HV,V,K] state in, a new "
    "float32 final state out (not in place)",
    "flashinfer": "vk pool (pretranspose) via initial_state + int32 initial_state_indices, in place",
    "copy": "torch copy_ of the state bytes",
}


def state_torch_dtype(state):
    return {"f32": torch.float32, "bf16": torch.bfloat16}[state]


def pool_bytes(shape, n, state):
    H, HV, K, V = shape
    return n * HV * V * K * (4 if state == "f32" else 2)


# ------------------------------------------------------------------------------------------
# libgdn through the repository's Python package (python/gdn): its ctypes mirror of
# gdn_decode_params is the one the package's tests keep in step with include/gdn.h
# ------------------------------------------------------------------------------------------

GDN_DTYPE = {"f32": 0, "f16": 1, "bf16": 2, "f64": 3, "i32": 4, "i64": 5}
GDN_BACKEND = {"auto": 0, "cpu": 1, "cuda": 2, "reference": 3}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class GdnError(RuntimeError):
    pass


class GdnLib:
    """libgdn at `path`, loaded by gdn._lib (GDN_LIBRARY); raw params, raw gdn_decode."""

    def __init__(self, path):
        os.environ["GDN_LIBRARY"] = os.path.abspath(path)
        sys.path.insert(0, os.path.join(REPO_ROOT, "python"))
        from gdn import _lib

        self._lib = _lib.LIB
        self.path, self.lib, self.version = self._lib.path, self._lib.cdll, self._lib.version
        self.params_size = self._lib.params_size

    def cuda_ready(self):
        return bool(self.lib.gdn_backend_built(GDN_BACKEND["cuda"])) and self.lib.gdn_cuda_device_count() > 0

    def params(self, **fields):
        p = self._lib.new_params()  # filled by gdn_decode_params_init, the library's struct_size
        for name, value in fields.items():
            setattr(p, name, value)
        return p

    def decode(self, p):
        status = self.lib.gdn_decode(ctypes.byref(p))
        if status != 0:
            raise GdnError(
                f"gdn_decode: {self.lib.gdn_status_string(status).decode()} ({status}): "
                f"{self.lib.gdn_last_error().decode()}"
            )


def torch_gdn_dtype(dtype):
    return GDN_DTYPE[{torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16",
                      torch.float64: "f64", torch.int32: "i32", torch.int64: "i64"}[dtype]]


def gdn_params(lib, shape, t, pool, slots, out, backend, **extra):
    """Params for one call on the tensors of t (q, k [N,T,H,K]; v, out [N,T,HV,V]; a, b
    [N,T,HV]; all packed, so strides stay 0; T = 1 for decode) and a vk pool; extra fields
    (token_slots...) as given."""
    H, HV, K, V = shape
    return lib.params(
        num_seqs=t["q"].shape[0], num_tokens=t["q"].shape[1], num_q_heads=H, num_v_heads=HV, head_dim_k=K,
        head_dim_v=V,
        act_dtype=torch_gdn_dtype(t["q"].dtype),
        q=t["q"].data_ptr(), k=t["k"].data_ptr(), v=t["v"].data_ptr(), a=t["a"].data_ptr(),
        b=t["b"].data_ptr(), out=out.data_ptr(), A_log=t["A_log"].data_ptr(), dt_bias=t["dt_bias"].data_ptr(),
        state_pool=pool.data_ptr(), num_slots=pool.shape[0], state_dtype=torch_gdn_dtype(pool.dtype),
        slot_indices=slots.data_ptr(), index_dtype=torch_gdn_dtype(slots.dtype),
        backend=GDN_BACKEND[backend], **extra,
    )


# ------------------------------------------------------------------------------------------
# Inputs and the float64 reference (SPEC 1)
# ------------------------------------------------------------------------------------------


def random_activations(shape, n, device, gen, act=None, tokens=1):
    """q, k, v, a, b in the [N, T, heads, dim] form all three APIs take (T = 1 for decode), plus
    the per-head gate parameters (drawn as gdn's own bench draws them)."""
    H, HV, K, V = shape
    act = act or torch.bfloat16

    def normal(*size):
        return torch.randn(*size, generator=gen, device=device, dtype=torch.float32).to(act)

    return {
        "q": normal(n, tokens, H, K), "k": normal(n, tokens, H, K), "v": normal(n, tokens, HV, V),
        "a": normal(n, tokens, HV), "b": normal(n, tokens, HV),
        "A_log": torch.log1p(15 * torch.rand(HV, generator=gen, device=device)),
        "dt_bias": -3 + torch.rand(HV, generator=gen, device=device),
    }


def random_pool(shape, slots, state, device, gen, sigma=0.1):
    H, HV, K, V = shape
    pool = torch.empty(slots, HV, V, K, dtype=state_torch_dtype(state), device=device)
    return pool.normal_(0.0, sigma, generator=gen)


def reference_decode(t, pool, slots, scale=None):
    """SPEC 1 in float64 on t's device: returns (out [N,HV,V], new pool), both float64.
    Rows with a negative slot are padding: zero output, no state touched."""
    f64 = torch.float64
    q, k, v = (t[x][:, 0].to(f64) for x in ("q", "k", "v"))
    a, b = t["a"][:, 0].to(f64), t["b"][:, 0].to(f64)
    N, H, K = q.shape
    HV = v.shape[1]
    scale = K ** -0.5 if scale is None else scale
    g = -torch.exp(t["A_log"].to(f64)) * torch.nn.functional.softplus(a + t["dt_bias"].to(f64), threshold=20.0)
    beta = torch.sigmoid(b)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) * scale
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    head = torch.arange(HV, device=q.device) // (HV // H)  # grouped mapping
    q, k = q[:, head], k[:, head]  # [N, HV, K]
    new_pool = pool.to(f64).clone()
    out = torch.zeros(N, HV, v.shape[2], dtype=f64, device=q.device)
    rows = [n for n in range(N) if int(slots[n]) >= 0]
    idx = torch.tensor([int(slots[n]) for n in rows], device=q.device, dtype=torch.long)
    r = torch.tensor(rows, device=q.device, dtype=torch.long)
    S = new_pool[idx] * torch.exp(g[r])[:, :, None, None]  # [R, HV, V, K]
    u = beta[r][:, :, None] * (v[r] - torch.einsum("rhvk,rhk->rhv", S, k[r]))
    S = S + u[:, :, :, None] * k[r][:, :, None, :]
    out[r] = torch.einsum("rhvk,rhk->rhv", S, q[r])
    new_pool[idx] = S
    return out, new_pool


def max_rel_err(x, ref):
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    if torch.isnan(x).any():
        return float("nan")
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


# ------------------------------------------------------------------------------------------
# Peers: import, and one call on the benchmark's tensors
# ------------------------------------------------------------------------------------------


def pkg_version(name):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


def flashinfer_version():
    """Its version, marked when fetch_wheels.sh repacked the wheel without flashinfer/data/."""
    version = pkg_version("flashinfer-python")
    try:
        from importlib import metadata

        if version and metadata.distribution("flashinfer-python").read_text("GDN_BENCH_SLIM"):
            version += " (wheel without flashinfer/data/)"
    except Exception:
        pass
    return version


def import_fla():
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    return fused_recurrent_gated_delta_rule


def import_flashinfer():
    import flashinfer.gdn_decode as fi

    # FlashInfer imports even when its CuTe DSL kernels do not; say why instead of failing later.
    if not fi._GDN_DECODE_BF16_STATE_AVAILABLE or getattr(fi, "run_pretranspose_decode", None) is None:
        try:
            importlib.import_module("cutlass.cute")

            why = "flashinfer.gdn_kernels failed to import"
        except Exception as e:
            why = f"`import cutlass.cute` fails: {type(e).__name__}: {e}"
        raise ImportError(f"flashinfer {pkg_version('flashinfer-python')} has no GDN decode kernels: {why}")
    return fi.gated_delta_rule_decode_pretranspose


def load_peers(lib_path, wanted):
    """{impl: callable-or-GdnLib} and {impl: reason} for those that are not usable here."""
    loaded, missing = {}, {}
    for impl in wanted:
        try:
            if impl == "gdn":
                lib = GdnLib(lib_path)
                if not lib.cuda_ready():
                    raise GdnError(f"{lib_path} has no usable cuda backend (built without nvcc, or no sm_80+ GPU)")
                loaded[impl] = lib
            elif impl == "fla":
                loaded[impl] = import_fla()
            elif impl == "flashinfer":
                loaded[impl] = import_flashinfer()
            elif impl == "copy":
                loaded[impl] = None
        except Exception as e:
            missing[impl] = f"import failed: {type(e).__name__}: {e}".strip()
    return loaded, missing


def fla_call(fn, t, state):
    """FLA: gate and beta computed in the kernel from raw a, b (use_gate_in_kernel,
    use_beta_sigmoid_in_kernel), l2norm in the kernel, vk state. Returns (o, final_state)."""
    return fn(t["q"], t["k"], t["v"], g=t["a"], beta=t["b"], initial_state=state, output_final_state=True,
              use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=t["A_log"], dt_bias=t["dt_bias"],
              use_beta_sigmoid_in_kernel=True, state_v_first=True)


def flashinfer_call(fn, t, pool, slots32, out):
    """FlashInfer: pool mode (initial_state + initial_state_indices), in place, gating and
    l2norm in the kernel, output written into out."""
    return fn(t["q"], t["k"], t["v"], None, t["A_log"], t["a"], t["dt_bias"], t["b"], output=out,
              use_qk_l2norm=True, initial_state=pool, initial_state_indices=slots32)


def unsupported(impl, state):
    if impl == "fla" and state == "bf16":
        return ("no bf16 state: FLA returns its final state as a new float32 tensor (it reads a bf16 "
                "initial state, then writes twice the bytes), nothing in place")
    return None


# ------------------------------------------------------------------------------------------
# Accuracy: one small case per shape and state dtype, every peer against the reference
# ------------------------------------------------------------------------------------------


def check_case(shape, state, device, loaded, gdn_backend="cuda", seed=1234):
    """Returns a list of dicts: impl, err_out, err_state, contract, ok."""
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(CHECK_SLOTS)
    t = random_activations(shape, n, device, gen)
    pool0 = random_pool(shape, CHECK_NUM_SLOTS, state, device, gen)
    slots64 = torch.tensor(CHECK_SLOTS, dtype=torch.int64, device=device)
    ref_out, ref_pool = reference_decode(t, pool0, CHECK_SLOTS)
    rows = [i for i, s in enumerate(CHECK_SLOTS) if s >= 0]
    pad_rows = [i for i, s in enumerate(CHECK_SLOTS) if s < 0]
    used = sorted(s for s in CHECK_SLOTS if s >= 0)
    unused = [s for s in range(CHECK_NUM_SLOTS) if s not in used]
    results = []
    for impl, peer in loaded.items():
        if impl == "copy":
            continue
        why = unsupported(impl, state)
        if why:
            results.append({"impl": impl, "skipped": why})
            continue
        try:
            contract = []
            out = torch.full((n, 1, shape[1], shape[3]), float("nan"), dtype=torch.bfloat16, device=device)
            pool = pool0.clone()
            untouched, padded = unused, pad_rows  # what this impl promises to leave alone / zero
            if impl == "gdn":
                peer.decode(gdn_params(peer, shape, t, pool, slots64, out, gdn_backend))
            elif impl == "flashinfer":
                flashinfer_call(peer, t, pool, slots64.to(torch.int32), out)
                if state == "bf16":  # documented: padding rows go to slot 0, their output undefined
                    untouched, padded = [s for s in unused if s != 0], []
                    contract.append("padding→slot 0 (documented)")
            elif impl == "fla":  # no indices: gather the rows' states, no padding row possible
                row_slots = torch.tensor([CHECK_SLOTS[i] for i in rows], device=device)
                per_row = {x: (v if x in ("A_log", "dt_bias") else v[rows]) for x, v in t.items()}
                o, ht = fla_call(peer, per_row, pool[row_slots].contiguous())
                out[rows] = o
                pool[row_slots] = ht.to(pool.dtype)
                padded = []
                contract.append("no padding/indices in API")
            if device != "cpu":
                torch.cuda.synchronize()
            valid = torch.tensor(rows, device=device)
            err_out = max_rel_err(out[valid, 0], ref_out[valid])
            err_state = max_rel_err(pool[used], ref_pool[used])
            # SPEC's padding contract binds gdn; for a peer a difference is reported, not failed.
            bad = "FAIL: " if impl == "gdn" else "differs: "
            if padded and bool(torch.isnan(out[padded].float()).any()):
                contract.append(bad + "padding row output left unwritten")
            elif padded and not bool((out[padded] == 0).all()):
                contract.append(bad + "padding row output not zero")
            if not torch.equal(pool[untouched], pool0[untouched]):
                contract.append(bad + "a slot no row names was written")
            ok = err_out <= CHECK_TOL and err_state <= CHECK_TOL and not any(c.startswith("FAIL") for c in contract)
            results.append({"impl": impl, "err_out": err_out, "err_state": err_state,
                            "contract": "; ".join(contract) or "ok", "ok": ok})
        except Exception as e:
            results.append({"impl": impl, "error": f"{type(e).__name__}: {e}"})
    return results


# ------------------------------------------------------------------------------------------
# Timing: CUDA graph of rotating calls, median over replays (as tools/cmd_bench.c)
# ------------------------------------------------------------------------------------------


class Case:
    """Buffer sets for one (shape, state, N): each a full set of activations, output, state
    pool and slot indices, so consecutive calls touch different memory."""

    def __init__(self, shape, state, n, count, device, gen, need_scratch):
        self.shape, self.state, self.n = shape, state, n
        perm = torch.randperm(n, generator=gen, device=device)  # engines hand permuted slots
        self.sets = []
        for _ in range(count):
            t = random_activations(shape, n, device, gen)
            t["out"] = torch.empty_like(t["v"])
            t["pool"] = random_pool(shape, n, state, device, gen, sigma=0.05)
            t["slots64"], t["slots32"] = perm.clone(), perm.to(torch.int32)
            self.sets.append(t)
        # The copy baseline writes the set half a rotation ahead; with one set, a scratch pool.
        self.scratch = torch.empty_like(self.sets[0]["pool"]) if need_scratch and count == 1 else None


def plan_sets(shape, n, state, free_bytes):
    """Sets whose pools add up to ROTATION_BYTES, within what free memory allows (FLA keeps
    as many final states again, and the copy may need a scratch pool)."""
    H, HV, K, V = shape
    pb = pool_bytes(shape, n, state)
    per_set = pb + n * (2 * H * K + 2 * HV * V + 2 * HV) * 2
    f32_pb = pool_bytes(shape, n, "f32")
    want = max(1, min(MAX_SETS, math.ceil(ROTATION_BYTES / pb)))
    # count sets + (count + 1) FLA final states (float32) + one copy scratch pool
    fit = int((0.8 * free_bytes - f32_pb - pb) // (per_set + f32_pb))
    return max(0, min(want, fit))


def make_timed_call(impl, peer, case, gdn_backend="cuda", gdn_extra=None, flashinfer=None):
    """call(i) enqueues call number i on the current stream; keep holds what must outlive it.
    impl "gdn..." takes extra params per set from gdn_extra(set) (token slots: mtp_bench.py);
    flashinfer(peer, set, pool, slots32, out) replaces flashinfer_call; the copy moves the
    first N slots of the pool (all of it for decode)."""
    sets, count = case.sets, len(case.sets)
    keep = collections.deque(maxlen=count + 1)
    if impl.startswith("gdn"):
        params = [gdn_params(peer, case.shape, s, s["pool"], s["slots64"], s["out"], gdn_backend,
                             **(gdn_extra(s) if gdn_extra else {})) for s in sets]

        def call(i):
            p = params[i % count]
            p.stream = torch.cuda.current_stream().cuda_stream
            peer.decode(p)

    elif impl == "fla":
        # FLA allocates its output and final state per call. Holding the last count + 1 of
        # them makes the graph's allocator rotate over that many, so its writes miss L2 too.
        def call(i):
            s = sets[i % count]
            keep.append(fla_call(peer, s, s["pool"]))

    elif impl == "flashinfer":
        run = flashinfer or flashinfer_call

        def call(i):
            s = sets[i % count]
            run(peer, s, s["pool"], s["slots32"], s["out"])

    else:  # copy, in pieces of at most COPY_CHUNK bytes (a copy of 512 MiB or more takes a path
        # a third slower on the H200, which would make the limit fall off at large N)
        n = sets[0]["slots64"].shape[0]

        def call(i):
            dst = sets[(i + count // 2) % count]["pool"][:n] if count > 1 else case.scratch
            src = sets[i % count]["pool"][:n]
            flat_dst, flat_src = dst.reshape(-1), src.reshape(-1)
            step = COPY_CHUNK // flat_src.element_size()
            for at in range(0, flat_src.numel(), step):
                flat_dst[at:at + step].copy_(flat_src[at:at + step])

    return call, keep


def time_calls(call, count, reps, keep):
    """Median microseconds per call: eager warm-up (JIT compiles, first touch), capture of
    `calls` calls into one graph, one warm-up replay, then `reps` timed replays."""
    calls = count if count >= MIN_CALLS else (MIN_CALLS // count) * count
    torch.cuda.synchronize()  # the buffers were filled on the default stream
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for c in range(calls):
            call(c)
    stream.synchronize()
    keep.clear()  # the warm-up's outputs (FLA) need not stay beside the graph's
    graph = torch.cuda.CUDAGraph()
    # thread_local, as tools/timing.c captures: other threads' CUDA calls stay legal
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        for c in range(calls):
            call(c)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    with torch.cuda.stream(stream):
        graph.replay()
        for _ in range(reps):
            start.record(stream)
            graph.replay()
            stop.record(stream)
            stop.synchronize()
            samples.append(start.elapsed_time(stop) * 1e3 / calls)
    del graph
    return statistics.median(samples), calls


def bench_case(shape_name, state, n, loaded, missing, reps, log, device="cuda", gdn_backend="cuda"):
    """Times every impl on one (shape, state, N). Returns (rows, notes)."""
    shape = SHAPES[shape_name]
    rows, notes = [], []
    for impl in IMPLS:
        if impl in missing:
            notes.append((impl, missing[impl]))
    free = torch.cuda.mem_get_info()[0]
    count = plan_sets(shape, n, state, free)
    if count < 1:
        for impl in loaded:
            notes.append((impl, f"state pool of {pool_bytes(shape, n, state) >> 20} MiB does not fit in free memory"))
        return rows, notes
    gen = torch.Generator(device=device).manual_seed(n * 7919 + len(state))
    case = None
    try:
        case = Case(shape, state, n, count, device, gen, need_scratch="copy" in loaded)
        for impl in ("copy",) + PEERS:  # copy first: the others are read against it
            if impl not in loaded:
                continue
            why = unsupported(impl, state)
            if why:
                notes.append((impl, "not run: " + why))
                continue
            call, keep = make_timed_call(impl, loaded[impl], case, gdn_backend)
            try:
                us, calls = time_calls(call, count, reps, keep)
                gbps = 2 * pool_bytes(shape, n, state) / (us * 1e3)
                rows.append({"shape": shape_name, "H": shape[0], "HV": shape[1], "K": shape[2], "V": shape[3],
                             "state_dtype": state, "N": n, "impl": impl, "median_us": us, "gbps": gbps,
                             "sets": count, "calls": calls})
                log(f"  {shape_name:13s} {state:4s} N={n:5d} {impl:10s} {us:10.2f} us {gbps:8.1f} GB/s "
                    f"({count} sets, {calls} calls/graph)")
            except Exception as e:
                msg = f"failed: {type(e).__name__}: {str(e)[:500]}"
                notes.append((impl, msg))
                log(f"  {shape_name:13s} {state:4s} N={n:5d} {impl:10s} {msg}")
                torch.cuda.synchronize()
            finally:
                keep.clear()
    except torch.cuda.OutOfMemoryError as e:
        notes.append(("all", f"out of memory building {count} buffer sets: {str(e)[:200]}"))
    finally:
        del case
        torch.cuda.empty_cache()
    return rows, notes


# ------------------------------------------------------------------------------------------
# Cold start: a fresh process, from its start to the first synchronized decode result
# ------------------------------------------------------------------------------------------


def cold_child(impl, lib_path, t0):
    """Runs in the child: prints one JSON line of seconds since t0 (the parent's clock just
    before it started this process)."""
    marks = {}
    load_torch()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    marks["torch_cuda_s"] = time.time() - t0
    loaded, missing = load_peers(lib_path, [impl])
    if impl in missing:
        print(json.dumps({"error": missing[impl]}))
        return 1
    marks["import_s"] = time.time() - t0
    shape = SHAPES[COLD_SHAPE]
    gen = torch.Generator(device="cuda").manual_seed(7)
    t = random_activations(shape, COLD_N, "cuda", gen)
    pool = random_pool(shape, COLD_N, COLD_STATE, "cuda", gen)
    slots = torch.randperm(COLD_N, generator=gen, device="cuda")
    out = torch.empty_like(t["v"])
    torch.cuda.synchronize()
    marks["inputs_s"] = time.time() - t0
    peer = loaded[impl]
    if impl == "gdn":
        peer.decode(gdn_params(peer, shape, t, pool, slots, out, "cuda"))
    elif impl == "fla":
        out = fla_call(peer, t, pool)[0]
    elif impl == "flashinfer":
        flashinfer_call(peer, t, pool, slots.to(torch.int32), out)
    float(out.float().sum())  # the first result, on the host
    marks["first_result_s"] = time.time() - t0
    print(json.dumps(marks))
    return 0


def cold_start(impls, lib_path, timeout_s, deadline, log):
    """Each impl twice in fresh processes sharing one new cache folder: first with every JIT
    cache empty (a fresh machine or a new version), then with the caches the first filled.
    No process outlives `deadline` (time.time()), so the run ends inside the call's limit."""
    results = []
    for impl in impls:
        cache = tempfile.mkdtemp(prefix=f"gdn-cold-{impl}-")
        env = dict(os.environ, FLASHINFER_WORKSPACE_BASE=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                   CUTE_DSL_CACHE_DIR=os.path.join(cache, "cute"), TVM_FFI_CACHE_DIR=os.path.join(cache, "tvm"),
                   CUDA_CACHE_PATH=os.path.join(cache, "nv"))
        for caches in ("empty", "warm"):
            t0 = time.time()
            limit = min(timeout_s, deadline - t0)
            if limit < 5:
                results.append({"impl": impl, "caches": caches, "error": "not run: past the time budget"})
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--cold-child", impl, "--lib", lib_path, "--t0", repr(t0)]
            row = {"impl": impl, "caches": caches}
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                tail = " | ".join([ln.strip() for ln in p.stderr.splitlines() if ln.strip()][-2:])[-400:]
                got = json.loads(lines[-1]) if lines else {"error": f"exit {p.returncode}: {tail}"}
                row.update(got)
            except subprocess.TimeoutExpired:
                row["error"] = f"no result within {limit:.0f} s"
            results.append(row)
            log(f"  cold start {impl:10s} caches {caches:5s}: " +
                (f"{row['first_result_s']:.2f} s" if "first_result_s" in row else row.get("error", "?")))
            if "error" in row:
                break
    return results


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------


def add_pct_of_copy(rows):
    copy = {(r["shape"], r["state_dtype"], r["N"]): r["gbps"] for r in rows if r["impl"] == "copy"}
    for r in rows:
        c = copy.get((r["shape"], r["state_dtype"], r["N"]))
        r["pct_of_copy"] = 100.0 * r["gbps"] / c if c else None


def write_csv(path, rows):
    cols = ["shape", "H", "HV", "K", "V", "state_dtype", "N", "impl", "median_us", "gbps", "pct_of_copy"]
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(f"{r['shape']},{r['H']},{r['HV']},{r['K']},{r['V']},{r['state_dtype']},{r['N']},{r['impl']},"
                    f"{r['median_us']:.3f},{r['gbps']:.1f},"
                    f"{'' if r['pct_of_copy'] is None else format(r['pct_of_copy'], '.1f')}\n")


def write_notes(path, notes):
    with open(path, "w") as f:
        f.write("shape,state_dtype,N,impl,reason\n")
        for n in notes:
            reason = n["reason"].replace('"', "'").replace("\n", " ")
            f.write(f"{n['shape']},{n['state_dtype']},{n['N']},{n['impl']},\"{reason}\"\n")


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown(res):
    rows, meta = res["rows"], res["meta"]
    out = [f"# GDN decode: gdn vs peers on {meta.get('device', '?')}", ""]
    out.append(f"- date {meta.get('date')}, gdn commit {meta.get('commit')}, libgdn {meta.get('gdn_version')}")
    out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()))
    out.append("- median µs per call of a CUDA graph of rotating calls (buffer sets > 4x L2 where memory "
               "allows); GB/s = 2·N·HV·V·K·sizeof(state) / time; %copy against torch copy_ of the same bytes; "
               "bf16 activations, A_log/dt_bias gating, l2norm in kernel")
    for impl, note in LAYOUT_NOTE.items():
        out.append(f"- {impl}: {note}")
    out.append("- peer/gdn: fastest peer's time over gdn's (> 1: gdn faster)")
    by = {(r["shape"], r["state_dtype"], r["N"], r["impl"]): r for r in rows}
    for shape in [s for s in SHAPES if any(r["shape"] == s for r in rows)]:
        for state in STATES:
            ns = sorted({r["N"] for r in rows if r["shape"] == shape and r["state_dtype"] == state})
            if not ns:
                continue
            H, HV, K, V = SHAPES[shape]
            out += ["", f"## {shape} (H={H} HV={HV} K={K} V={V}), state {state}", "",
                    "| N | state MiB | copy µs | copy GB/s | gdn µs | gdn %copy | fla µs | fla %copy "
                    "| flashinfer µs | flashinfer %copy | peer/gdn |",
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for n in ns:
                cell = lambda impl, key, spec: fmt(by.get((shape, state, n, impl), {}).get(key), spec)
                gdn = by.get((shape, state, n, "gdn"))
                peers = [by[(shape, state, n, p)]["median_us"] for p in ("fla", "flashinfer") if (shape, state, n, p) in by]
                ratio = min(peers) / gdn["median_us"] if gdn and peers else None
                out.append(f"| {n} | {pool_bytes(SHAPES[shape], n, state) / 2**20:.1f} | {cell('copy', 'median_us', '.2f')} "
                           f"| {cell('copy', 'gbps', '.0f')} | {cell('gdn', 'median_us', '.2f')} "
                           f"| {cell('gdn', 'pct_of_copy', '.1f')} | {cell('fla', 'median_us', '.2f')} "
                           f"| {cell('fla', 'pct_of_copy', '.1f')} | {cell('flashinfer', 'median_us', '.2f')} "
                           f"| {cell('flashinfer', 'pct_of_copy', '.1f')} | {fmt(ratio, '.2f')} |")
    if res["checks"]:
        out += ["", f"## Accuracy (N={len(CHECK_SLOTS)}, slots {list(CHECK_SLOTS)}, max|x-ref|/max|ref| "
                f"vs float64 reference, tolerance {CHECK_TOL:g})", "",
                "| shape | state | impl | out err | state err | contract | result |", "|---|---|---|---:|---:|---|---|"]
        order = {name: i for i, name in enumerate(list(SHAPES) + list(STATES) + list(IMPLS))}
        for c in sorted(res["checks"], key=lambda c: [order.get(c[k], 99) for k in ("shape", "state_dtype", "impl")]):
            if "err_out" in c:
                out.append(f"| {c['shape']} | {c['state_dtype']} | {c['impl']} | {c['err_out']:.2e} | "
                           f"{c['err_state']:.2e} | {c['contract']} | {'pass' if c['ok'] else 'FAIL'} |")
            else:
                why = c.get("error") or c.get("skipped").split(":")[0]
                out.append(f"| {c['shape']} | {c['state_dtype']} | {c['impl']} | — | — | {why[:200]} | "
                           f"{'FAIL' if 'error' in c else 'n/a'} |")
    if res["cold"]:
        out += ["", f"## Cold start ({COLD_SHAPE}, N={COLD_N}, {COLD_STATE} state): seconds from process start "
                "to the first result on the host", "",
                "| impl | JIT caches | total s | python+torch+CUDA s | import s | first call s |",
                "|---|---|---:|---:|---:|---:|"]
        for c in res["cold"]:
            if "first_result_s" in c:
                out.append(f"| {c['impl']} | {c['caches']} | {c['first_result_s']:.2f} | {c['torch_cuda_s']:.2f} | "
                           f"{c['import_s'] - c['torch_cuda_s']:.2f} | {c['first_result_s'] - c['inputs_s']:.2f} |")
            else:
                out.append(f"| {c['impl']} | {c['caches']} | — | — | — | {c.get('error', '?')[:160]} |")
    if res["notes"]:
        out += ["", "## Notes (peers not measured, and why)", ""]
        seen = collections.OrderedDict()
        for n in res["notes"]:
            seen.setdefault((n["impl"], n["reason"]), []).append(f"{n['shape']}/{n['state_dtype']}/N={n['N']}")
        for (impl, reason), where in seen.items():
            span = where[0] if len(where) == 1 else f"{len(where)} cases, e.g. {where[0]}"
            out.append(f"- {impl} ({span}): {reason[:300]}")
    return "\n".join(out) + "\n"


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"no plot: matplotlib: {e}"
    rows = res["rows"]
    shapes = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
    if not shapes:
        return "no plot: no rows"
    fig, axes = plt.subplots(len(shapes), len(STATES), figsize=(11, 3.4 * len(shapes)), squeeze=False)
    style = {"gdn": ("C0", "-"), "fla": ("C1", "-"), "flashinfer": ("C2", "-"), "copy": ("gray", "--")}
    for i, shape in enumerate(shapes):
        for j, state in enumerate(STATES):
            ax = axes[i][j]
            for impl in IMPLS:
                pts = sorted((r["N"], r["gbps"]) for r in rows
                             if r["shape"] == shape and r["state_dtype"] == state and r["impl"] == impl)
                if pts:
                    color, ls = style[impl]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker="o", ms=3, label=impl)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{shape} (HV={SHAPES[shape][1]}), {state} state", fontsize=9)
            ax.set_xlabel("N (sequences)")
            ax.set_ylabel("GB/s (state read + write)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"GDN decode on {res['meta'].get('device', '?')}, gdn {res['meta'].get('commit')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_all(out_dir, res):
    os.makedirs(out_dir, exist_ok=True)
    add_pct_of_copy(res["rows"])
    stem = os.path.join(out_dir, FILE_STEM)
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    write_csv(stem + ".csv", res["rows"])
    write_notes(stem + "-notes.csv", res["notes"])
    md = markdown(res)
    with open(stem + ".md", "w") as f:
        f.write(md)
    return md


def merge(dirs):
    """Runs split over several device calls: later rows of the same case and impl win."""
    res = {"meta": {}, "rows": [], "checks": [], "cold": [], "notes": []}
    rows, checks, cold = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    for d in dirs:
        with open(os.path.join(d, FILE_STEM + ".json")) as f:
            r = json.load(f)
        res["meta"] = r["meta"] or res["meta"]
        for x in r["rows"]:
            rows[(x["shape"], x["state_dtype"], x["N"], x["impl"])] = x
        for x in r["checks"]:
            checks[(x["shape"], x["state_dtype"], x["impl"])] = x
        for x in r["cold"]:
            cold[(x["impl"], x["caches"])] = x
        res["notes"] += r["notes"]
    res["rows"], res["checks"], res["cold"] = list(rows.values()), list(checks.values()), list(cold.values())
    measured = set(rows)
    notes = collections.OrderedDict()
    for n in res["notes"]:
        key = (n["shape"], n["state_dtype"], n["N"], n["impl"])
        if key not in measured:
            notes[key + (n["reason"],)] = n
    res["notes"] = list(notes.values())
    return res


# ------------------------------------------------------------------------------------------
# CPU self-test of the binding (no GPU needed): struct layout, numerics, errors
# ------------------------------------------------------------------------------------------


def cpu_selftest(lib_path):
    load_torch()
    lib = GdnLib(lib_path)
    print(f"libgdn {lib.version} at {lib.path}: gdn_decode_params is {lib.params_size} bytes")
    failures = 0
    shape = (2, 6, 32, 16)  # groups of 3, K != V: catches a swapped head map or layout
    for backend in ("cpu", "reference"):
        for state in STATES:
            for act in (torch.bfloat16, torch.float32):
                for index in (torch.int64, torch.int32):
                    gen = torch.Generator().manual_seed(5)
                    n = len(CHECK_SLOTS)
                    t = random_activations(shape, n, "cpu", gen, act)
                    pool0 = random_pool(shape, CHECK_NUM_SLOTS, state, "cpu", gen)
                    pool = pool0.clone()
                    slots = torch.tensor(CHECK_SLOTS, dtype=index)
                    out = torch.full((n, 1, shape[1], shape[3]), float("nan"), dtype=act)
                    lib.decode(gdn_params(lib, shape, t, pool, slots, out, backend))
                    ref_out, ref_pool = reference_decode(t, pool0, CHECK_SLOTS)
                    rows = [i for i, s in enumerate(CHECK_SLOTS) if s >= 0]
                    used = sorted(s for s in CHECK_SLOTS if s >= 0)
                    unused = [s for s in range(CHECK_NUM_SLOTS) if s not in used]
                    e_out = max_rel_err(out[rows, 0], ref_out[rows])
                    e_state = max_rel_err(pool[used], ref_pool[used])
                    pad_ok = bool((out[[2]] == 0).all()) and torch.equal(pool[unused], pool0[unused])
                    # fp32 everything should match to float32 rounding; bf16 to its rounding
                    tol = 1e-5 if (act == torch.float32 and state == "f32") else CHECK_TOL
                    ok = e_out <= tol and e_state <= tol and pad_ok
                    failures += not ok
                    print(f"  {backend:9s} state {state:4s} act {str(act)[6:]:8s} idx {str(index)[6:]:5s}: "
                          f"out err {e_out:.2e}, state err {e_state:.2e}, padding/untouched {'ok' if pad_ok else 'BAD'}"
                          f" (tol {tol:g}) {'ok' if ok else 'FAIL'}")
    # The accuracy check of the GPU run, on a model shape, through the cpu backend.
    for state in STATES:
        for c in check_case(SHAPES["contest"], state, "cpu", {"gdn": lib}, gdn_backend="cpu"):
            failures += not c.get("ok")
            print(f"  check_case contest {state:4s} {c['impl']}: " + (
                f"out err {c['err_out']:.2e}, state err {c['err_state']:.2e}, {c['contract']}, "
                f"{'pass' if c['ok'] else 'FAIL'}" if "err_out" in c else str(c)))
    # The error path: a status and a readable message, nothing written.
    t = random_activations((3, 4, 32, 16), 1, "cpu", torch.Generator().manual_seed(1))
    pool = torch.zeros(1, 4, 16, 32)
    try:
        lib.decode(gdn_params(lib, (3, 4, 32, 16), t, pool, torch.zeros(1, dtype=torch.int64),
                              torch.empty(1, 1, 4, 16, dtype=torch.bfloat16), "cpu"))
        print("  bad shape accepted: FAIL")
        failures += 1
    except GdnError as e:
        print(f"  bad shape refused: {e}")
    print(f"cpu self-test: {'passed' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="output folder")
    ap.add_argument("--lib", default="build/libgdn.so", help="libgdn built with CUDA (default build/libgdn.so)")
    ap.add_argument("--quick", action="store_true", help="smoke test: one shape, N in {1, 64}")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma list of " + ",".join(SHAPES))
    ap.add_argument("--states", default=",".join(STATES), help="comma list of f32,bf16")
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="comma list of batch sizes")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ",".join(IMPLS))
    ap.add_argument("--reps", type=int, default=30, help="timed graph replays per measurement (>= 20)")
    ap.add_argument("--budget-s", type=float, default=480,
                    help="seconds this run may take (the device call limit is 600): the timing sweep leaves "
                    "--cold-reserve-s of it to the cold start, which ends by then")
    ap.add_argument("--cold-reserve-s", type=float, default=120, help="part of the budget kept for the cold start")
    ap.add_argument("--cold-timeout-s", type=float, default=120, help="limit of one cold-start process")
    ap.add_argument("--skip-check", action="store_true", help="no accuracy check")
    ap.add_argument("--skip-cold", action="store_true", help="no cold-start measurement")
    ap.add_argument("--cpu-selftest", action="store_true", help="check the ctypes binding on the CPU backend")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="merge the <stem>.json of earlier runs into --out")
    ap.add_argument("--stem", default=FILE_STEM, help="output file names (default %(default)s)")
    ap.add_argument("--cold-child", help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.ns = "qwen3-next", "1,64"
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.states = [s for s in args.states.split(",") if s]
    args.ns = [int(n) for n in args.ns.split(",") if n]
    args.impls = [i for i in args.impls.split(",") if i]
    bad = [s for s in args.shapes if s not in SHAPES] + [s for s in args.states if s not in STATES] + \
          [i for i in args.impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown: {bad}")
    if not (args.cpu_selftest or args.cold_child) and not args.out:
        ap.error("--out DIR is required")
    args.reps = max(20, args.reps)
    return args


def main(argv):
    global FILE_STEM
    start = time.time()
    args = parse_args(argv)
    FILE_STEM = args.stem
    if args.cold_child:
        return cold_child(args.cold_child, args.lib, args.t0)
    if args.cpu_selftest:
        return cpu_selftest(args.lib)
    if args.merge:
        res = merge(args.merge)
        md = write_all(args.out, res)
        why = plot(res, os.path.join(args.out, FILE_STEM + ".png"))
        print(md + (f"\n{why}\n" if why else ""))
        return 0

    def log(msg):
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    load_torch()
    if not torch.cuda.is_available():
        print("peer_bench: torch sees no CUDA device; on a machine without a GPU only --cpu-selftest runs")
        return 2
    loaded, missing = load_peers(args.lib, args.impls)
    for impl, why in missing.items():
        log(f"{impl}: NOT AVAILABLE: {why}")
    meta = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": os.environ.get("GDN_COMMIT", "unknown"),
        "gdn_version": loaded["gdn"].version if "gdn" in loaded else None,
        "versions": {k: v for k, v in {
            "python": sys.version.split()[0], "torch": torch.__version__, "triton": pkg_version("triton"),
            "fla-core": pkg_version("fla-core"), "flashinfer-python": flashinfer_version(),
            "nvidia-cutlass-dsl": pkg_version("nvidia-cutlass-dsl"), "apache-tvm-ffi": pkg_version("apache-tvm-ffi"),
            "cuda-bindings": pkg_version("cuda-bindings")}.items() if v},
        "args": {k: v for k, v in vars(args).items() if k not in ("cold_child", "t0")},
    }
    log(f"{meta['device']}: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    res = {"meta": meta, "rows": [], "checks": [], "cold": [], "notes": []}

    def note(shape, state, n, impl, reason):
        res["notes"].append({"shape": shape, "state_dtype": state, "N": n, "impl": impl, "reason": reason})

    if not args.skip_check:
        log("accuracy")
        for shape in args.shapes:
            for state in args.states:
                for c in check_case(SHAPES[shape], state, "cuda", {k: v for k, v in loaded.items() if k != "copy"}):
                    c.update(shape=shape, state_dtype=state)
                    res["checks"].append(c)
                    log(f"  {shape:13s} {state:4s} {c['impl']:10s} " + (
                        f"out {c['err_out']:.2e} state {c['err_state']:.2e} {c['contract']} "
                        f"{'pass' if c['ok'] else 'FAIL'}" if "err_out" in c else c.get("error") or "n/a"))
        write_all(args.out, res)

    log("timing")
    cold_reserve = 0 if args.skip_cold else args.cold_reserve_s
    for shape in args.shapes:
        for state in args.states:
            for n in args.ns:
                if time.time() - start > args.budget_s - cold_reserve:
                    for impl in args.impls:
                        note(shape, state, n, impl, f"not run: past the time budget of {args.budget_s:.0f} s "
                             "(run again with --shapes/--states/--ns and --merge)")
                    continue
                rows, notes = bench_case(shape, state, n, loaded, missing, args.reps, log)
                res["rows"] += rows
                for impl, reason in notes:
                    note(shape, state, n, impl, reason)
            write_all(args.out, res)

    if not args.skip_cold:
        log("cold start")
        res["cold"] = cold_start([i for i in args.impls if i in loaded and i != "copy"], args.lib,
                                 args.cold_timeout_s, start + args.budget_s, log)
        for impl in missing:
            if impl != "copy":
                res["cold"].append({"impl": impl, "caches": "—", "error": missing[impl]})

    md = write_all(args.out, res)
    why = plot(res, os.path.join(args.out, FILE_STEM + ".png"))
    log(f"wrote {args.out}/{FILE_STEM}.{{csv,md,png,json}} and {FILE_STEM}-notes.csv" + (f" ({why})" if why else ""))
    print("\n" + md, flush=True)
    failed = any(c.get("impl") == "gdn" and not c.get("ok", True) for c in res["checks"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
