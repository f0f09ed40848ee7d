#!/usr/bin/env python3
"""Chunked prefill (varlen, one call per batch) beside the peers, on one GPU:

    python3 bench/peers/prefill_bench.py --out DIR [--lib build/libgdn.so] [--cases ...] [--shapes ...]
    python3 bench/peers/prefill_bench.py --cpu-selftest [--lib build/libgdn.so]

For each case (sequence lengths of one batch) and shape it times, as a CUDA graph of ONE call
(or of the split pair) replayed --reps times, one replay between two events, the median:
  gdn         gdn.forward with the raw gates a, b, A_log, dt_bias (gating in the kernel)
  gdn-gates   gdn.forward with g and beta precomputed (what the peers are handed)
  fla         fla.ops.gated_delta_rule.chunk_gated_delta_rule (Triton), f32 g log-decay
  flashinfer  flashinfer.gdn_prefill.chunk_gated_delta_rule (CuTe DSL), g as the decay factor
  split       one long sequence + one-token sequences only: FLA's chunk for the long one and
              gdn.decode for the rest, both in one graph (what an engine can do without a
              varlen prefill kernel that handles both)
All take bf16 q/k/v, l2norm in the kernel and an f32 state in the vk layout [.., HV, V, K].
Before timing, every impl runs once more on the case (cut to --ref-max-tokens tokens a sequence)
and its output and final states are compared with a float64 token-by-token reference.

Writes in DIR <stem>.csv (case,shape,state_dtype,num_seqs,total_tokens,impl,median_us, the
columns of ../shared/baselines/h200-2026-12-02/fi-fla-prefill-h200.csv), <stem>-accuracy.csv
(case,shape,impl,tokens_checked,out_rel_l2,state_rel_l2), <stem>.md and <stem>.png.
"""
import argparse
import collections
import datetime
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_bench as pb  # noqa: E402  (importing it processes the .pth files FlashInfer's cutlass needs)

STEM = "prefill-h200"
CASES = ("1x4096", "4x4096", "1x32768", "mixed-1x8192+256x1")
SHAPES = ("qwen3-next", "contest")
IMPLS = ("gdn", "gdn-gates", "fla", "flashinfer", "split")
PEERS = ("fla", "flashinfer", "split")  # "fastest peer" is the fastest of these
WARMUP_CALLS = 3  # eager calls before capture: Triton autotuning, CuTe DSL compiles, FLA's cu_seqlens caches
WARM_REPLAYS = 3
SELFTEST_TOL = 1e-2  # relative L2 of the cpu backend (f32 math, bf16 activations) vs float64
torch = None
F = None


def case_lengths(name):
    """Sequence lengths from a case name: "4x4096" is 4 sequences of 4096 tokens,
    "mixed-1x8192+256x1" one of 8192 then 256 of 1 (any '+'-joined NxL terms)."""
    lens = []
    for term in name.removeprefix("mixed-").split("+"):
        n, length = term.split("x")
        lens += [int(length)] * int(n)
    return lens


def splittable(lens):
    return len(lens) > 1 and lens[0] > 1 and all(n == 1 for n in lens[1:])


# -------- One varlen batch


class Case:
    """Token rows of all sequences one after another ([R, heads, dim], the form all three
    libraries take), the gates in every form the impls want (computed here, outside the timed
    region), a pool of N random states and permuted slots (sequence n lives in slot slots[n])."""

    def __init__(self, name, shape_name, shape, lens, device, seed, act=None, state_dtype=None):
        self.name, self.shape_name, self.shape = name, shape_name, shape
        gen = torch.Generator(device=device).manual_seed(seed)
        # pb's recipe: q, k, v, a, b ~ N(0, 1) in the activation dtype, A_log = log1p(15 U),
        # dt_bias = U - 3 (gdn's own bench draws them so); here as one sequence of R rows.
        t = pb.random_activations(shape, 1, device, gen, act=act, tokens=sum(lens))
        self.q, self.k, self.v, self.a, self.b = (t[x][0] for x in ("q", "k", "v", "a", "b"))
        self.A_log, self.dt_bias = t["A_log"], t["dt_bias"]
        self.pool = pb.random_pool(shape, len(lens), "f32", device, gen, sigma=0.1).to(state_dtype or torch.float32)
        self.slots = torch.randperm(len(lens), generator=gen, device=device)
        self._derive(lens)

    def _derive(self, lens):
        self.lens, self.N, self.R, self.max_seqlen = list(lens), len(lens), sum(lens), max(lens)
        dev = self.q.device
        self.starts = [sum(lens[:n]) for n in range(len(lens))]
        self.cu = torch.tensor(self.starts + [self.R], dtype=torch.int64, device=dev)
        self.cu32, self.slots32 = self.cu.to(torch.int32), self.slots.to(torch.int32)
        self.g = (-torch.exp(self.A_log) * F.softplus(self.a.float() + self.dt_bias)).contiguous()  # log-decay
        self.alpha = torch.exp(self.g)  # FlashInfer's g: the decay factor itself
        self.beta32 = torch.sigmoid(self.b.float())
        self.beta_act = self.beta32.to(self.q.dtype)  # gdn takes beta in the activation dtype

    def truncated(self, max_tokens):
        """The same case with every sequence cut to its first max_tokens tokens (the same rows,
        the same pool and slots): what the float64 reference can afford."""
        if self.max_seqlen <= max_tokens:
            return self
        lens = [min(n, max_tokens) for n in self.lens]
        rows = torch.cat([torch.arange(s, s + n, device=self.q.device) for s, n in zip(self.starts, lens)])
        c = object.__new__(Case)
        c.name, c.shape_name, c.shape = self.name, self.shape_name, self.shape
        for x in ("q", "k", "v", "a", "b"):
            setattr(c, x, getattr(self, x)[rows].contiguous())
        c.A_log, c.dt_bias, c.pool, c.slots = self.A_log, self.dt_bias, self.pool, self.slots
        c._derive(lens)
        return c


def reference(c):
    """SPEC 1 in float64, token by token within each sequence (pb.reference_decode's math):
    (out [R, HV, V], final states [N, HV, V, K] in sequence order). The loop runs over token
    positions, vectorised over heads and over the sequences still running at that position."""
    f64 = torch.float64
    H, HV, K, V = c.shape
    head = torch.arange(HV, device=c.q.device) // (HV // H)  # grouped head map

    def l2norm(x):
        x = x.to(f64)
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)

    q, k = (l2norm(c.q) * K ** -0.5)[:, head], l2norm(c.k)[:, head]  # [R, HV, K]
    v = c.v.to(f64)
    decay = torch.exp(-torch.exp(c.A_log.to(f64)) * F.softplus(c.a.to(f64) + c.dt_bias.to(f64), threshold=20.0))
    beta = torch.sigmoid(c.b.to(f64))
    S = c.pool[c.slots].to(f64)
    out = torch.zeros(c.R, HV, V, dtype=f64, device=c.q.device)
    bounds = sorted({0} | set(c.lens))
    for lo, hi in zip(bounds, bounds[1:]):  # positions lo..hi-1 have the same running sequences
        running = [n for n in range(c.N) if c.lens[n] >= hi]
        idx = torch.tensor(running, device=c.q.device)
        base = torch.tensor([c.starts[n] for n in running], device=c.q.device)
        s = S[idx]
        for t in range(lo, hi):
            r = base + t
            kt = k[r]
            s = s * decay[r][:, :, None, None]
            u = beta[r][:, :, None] * (v[r] - (s @ kt[..., None])[..., 0])  # [n, HV, V]
            s = s + u[..., None] * kt[:, :, None, :]
            out[r] = (s @ q[r][..., None])[..., 0]
        S[idx] = s
    return out, S


def rel_l2(x, ref):
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    if not torch.isfinite(x).all():
        return float("nan")
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))


# ------------------------------------------------------------------------------------------
# The impls: call() enqueues one call on the current stream (capturable: no host copy, no
# allocation gdn needs), result() gives (out [R, HV, V], final states [N, HV, V, K] in sequence
# order) once it has run. Each works on its own copy of the pool.
# ------------------------------------------------------------------------------------------


def import_fla_chunk():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fn

    # Its **kwargs would swallow an unknown state_v_first and leave the state [N, HV, K, V].
    if "state_v_first" not in inspect.signature(fn).parameters:
        raise ImportError(f"fla-core {pb.pkg_version('fla-core')}: chunk_gated_delta_rule has no state_v_first")
    return fn


def import_flashinfer_prefill():
    import flashinfer.gdn_prefill as fip

    # Like its decode (pb.import_flashinfer), FlashInfer imports without its CuTe DSL kernels
    # when `cutlass` is missing; say why now instead of a NoneType error inside the call.
    major = torch.cuda.get_device_capability()[0]
    kernel = {9: "chunk_gated_delta_rule_sm90", 10: "chunk_gated_delta_rule_sm100",
              12: "chunk_gated_delta_rule_sm120"}.get(major)
    if kernel is None or getattr(fip, kernel, None) is None:
        try:
            import cutlass.cute  # noqa: F401

            why = f"flashinfer.gdn_prefill.{kernel or 'its kernels'} is None on sm_{major}x"
        except Exception as e:
            why = f"`import cutlass.cute` fails: {type(e).__name__}: {e}"
        raise ImportError(f"flashinfer {pb.pkg_version('flashinfer-python')} has no GDN prefill kernel: {why}")
    return fip.chunk_gated_delta_rule


def fla_args(c, rows, init):
    """FLA's varlen form: [1, R, ...] activations, int64 cu_seqlens, the log-decay g (f32), beta
    after the sigmoid (f32), a packed sequence-ordered initial state; it has no slot indices and
    returns its final state as a new tensor. state_v_first=True: [N, HV, V, K], gdn's vk."""
    lo, hi = rows
    cu = c.cu if (lo, hi) == (0, c.R) else torch.tensor([0, hi - lo], dtype=torch.int64, device=c.q.device)
    return dict(q=c.q[None, lo:hi], k=c.k[None, lo:hi], v=c.v[None, lo:hi], g=c.g[None, lo:hi],
                beta=c.beta32[None, lo:hi], initial_state=init, output_final_state=True,
                use_qk_l2norm_in_kernel=True, state_v_first=True, cu_seqlens=cu)


def flashinfer_args(fn, c, out, pool):
    """FlashInfer's call from its signature (read at run time): q/k/v [R, heads, dim], g = the
    decay factor exp(g) (f32; its kernel takes log2 of it), beta f32, int32 cu_seqlens, max_seqlen.
    With state_indices and output_state: the pool in place (initial_state = output_state = pool),
    as gdn; else a packed sequence-ordered state in and a new final state out. (kwargs, pooled)"""
    params = inspect.signature(fn).parameters
    kw = dict(g=c.alpha, beta=c.beta32, output_final_state=True, cu_seqlens=c.cu32, use_qk_l2norm_in_kernel=True)
    pooled = "state_indices" in params and "output_state" in params
    if pooled:
        kw.update(initial_state=pool, output_state=pool, state_indices=c.slots32)
    else:
        kw["initial_state"] = c.pool[c.slots].contiguous()
    if "output" in params:
        kw["output"] = out
    if "max_seqlen" in params:
        kw["max_seqlen"] = c.max_seqlen
    if "g" not in params:  # a signature that cannot be read (*args, **kwargs): 0.7.2's names
        return kw, pooled
    return {k: v for k, v in kw.items() if k in params}, pooled


def make_call(impl, c, fns, backend="cuda"):
    gdn = fns.get("gdn")
    out = torch.empty_like(c.v)
    pool = c.pool.clone()
    got = {}
    if impl in ("gdn", "gdn-gates"):
        gates = (dict(a=c.a, b=c.b, A_log=c.A_log, dt_bias=c.dt_bias) if impl == "gdn" else
                 dict(a=None, b=None, A_log=None, dt_bias=None, g=c.g, beta=c.beta_act))

        def call():  # max_seqlen given: no device-to-host read of cu_seqlens, so capturable
            gdn.forward(c.q, c.k, c.v, state_pool=pool, cu_seqlens=c.cu, slot_indices=c.slots, out=out,
                        max_seqlen=c.max_seqlen, backend=backend, **gates)

        return call, lambda: (out, pool[c.slots])
    if impl == "fla":
        kw = fla_args(c, (0, c.R), c.pool[c.slots].contiguous())

        def call():
            got["o"], got["ht"] = fns["fla"](**kw)

        return call, lambda: (got["o"][0], got["ht"])
    if impl == "flashinfer":
        kw, pooled = flashinfer_args(fns["flashinfer"], c, out, pool)

        def call():
            got["o"], got["ht"] = fns["flashinfer"](c.q, c.k, c.v, **kw)

        return call, lambda: (got["o"], got["ht"][c.slots] if pooled else got["ht"])
    if impl == "split":
        if not splittable(c.lens):
            raise ValueError("split is for one long sequence followed by one-token sequences")
        L0 = c.lens[0]
        kw = fla_args(c, (0, L0), c.pool[c.slots[:1]].contiguous())

        def call():
            got["o"], got["ht"] = fns["fla"](**kw)
            gdn.decode(c.q[L0:], c.k[L0:], c.v[L0:], c.a[L0:], c.b[L0:], c.A_log, c.dt_bias, pool, c.slots[1:],
                       out=out[L0:], backend=backend)

        return call, lambda: (torch.cat([got["o"][0], out[L0:]]), torch.cat([got["ht"], pool[c.slots[1:]]]))
    raise ValueError(f"unknown impl {impl}")


def call_noting(call, notes, impl):
    """Runs call(), adding the library's warnings (FlashInfer's CP fallback...) to notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    for w in caught:
        msg = f"{impl}: warning: {w.category.__name__}: {str(w.message)[:300]}"
        if msg not in notes:
            notes.append(msg)


def time_graph(call, reps, impl, notes):
    """Median microseconds of one graph replay, pb.time_calls' way (eager warm-up on a side
    stream, thread_local capture, warm replays, event pairs), with ONE call in the graph: a
    prefill call lasts 100 us or more, so the event overhead is small."""
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            call_noting(call, notes, impl)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        call()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    with torch.cuda.stream(stream):
        for _ in range(WARM_REPLAYS):
            graph.replay()
        for _ in range(reps):
            start.record(stream)
            graph.replay()
            stop.record(stream)
            stop.synchronize()
            samples.append(start.elapsed_time(stop) * 1e3)
    del graph
    return statistics.median(samples)


def check_accuracy(c, impls, fns, ref_max, backend, notes, log):
    """Every impl once on the case cut to ref_max tokens a sequence, against the reference."""
    ck = c.truncated(ref_max)
    t0 = time.time()
    ref_out, ref_state = reference(ck)
    log(f"  reference of {ck.R} tokens ({ck.max_seqlen} a sequence at most) in {time.time() - t0:.1f} s")
    rows = []
    for impl in impls:
        row = {"case": c.name, "shape": c.shape_name, "impl": impl, "tokens_checked": ck.R}
        try:
            call, result = make_call(impl, ck, fns, backend)
            call_noting(call, notes, impl)
            if backend == "cuda":
                torch.cuda.synchronize()
            o, st = result()
            row.update(out_rel_l2=rel_l2(o, ref_out), state_rel_l2=rel_l2(st, ref_state),
                       out_max_rel=pb.max_rel_err(o, ref_out), state_max_rel=pb.max_rel_err(st, ref_state))
            log(f"  {impl:10s} out rel L2 {row['out_rel_l2']:.2e} (max {row['out_max_rel']:.2e}), "
                f"state rel L2 {row['state_rel_l2']:.2e} (max {row['state_max_rel']:.2e})")
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            log(f"  {impl:10s} accuracy run failed: {row['error']}")
            if backend == "cuda":
                torch.cuda.synchronize()
        rows.append(row)
    return rows


# -------- Reports


def fmt(x, spec):
    return "—" if x is None else format(x, spec)  # NaN prints as nan


def write_reports(out_dir, res, stem):
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    with open(base + ".csv", "w") as f:
        f.write("case,shape,state_dtype,num_seqs,total_tokens,impl,median_us\n")
        for r in res["rows"]:
            f.write(f"{r['case']},{r['shape']},f32,{r['num_seqs']},{r['total_tokens']},{r['impl']},"
                    f"{r['median_us']:.1f}\n")
    with open(base + "-accuracy.csv", "w") as f:
        f.write("case,shape,impl,tokens_checked,out_rel_l2,state_rel_l2\n")
        for a in res["accuracy"]:
            f.write(f"{a['case']},{a['shape']},{a['impl']},{a['tokens_checked']},"
                    f"{fmt(a.get('out_rel_l2'), '.3e').strip('—')},{fmt(a.get('state_rel_l2'), '.3e').strip('—')}\n")
    with open(base + ".json", "w") as f:  # for --merge of runs split over several device calls
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(base + ".md", "w") as f:
        f.write(md)
    why = plot(res, base + ".png")
    return md, why


def markdown(res):
    m, impls = res["meta"], res["impls"]
    out = [f"# GDN chunked prefill: gdn vs peers on {m['device']}", "",
           f"- date {m['date']}, gdn commit {m['commit']}, libgdn {m.get('gdn_version')}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
           "- GDN_* environment: " + (", ".join(f"{k}={v}" for k, v in m["gdn_env"].items()) or "none"),
           f"- median µs of {m['reps']} replays of a CUDA graph holding one call (split: its two calls), "
           "one replay between two CUDA events, after eager warm-up calls; inputs fresh random "
           "(q, k, v, a, b ~ N(0,1) bf16; A_log = log1p(15U), dt_bias = U-3; states N(0, 0.1²) f32); "
           "the same buffers every replay (a prefill's inputs are written just before it in a model too)",
           "- every impl: bf16 q/k/v/out, l2norm of q and k in the call, f32 state [.., HV, V, K], "
           "gates from g = -exp(A_log)·softplus(a+dt_bias) (f32) and beta = sigmoid(b), computed outside "
           "the timed call for every impl but `gdn`",
           "- gdn: gdn.forward(q, k, v, a, b, A_log, dt_bias, pool, cu_seqlens, slot_indices, out, "
           "max_seqlen), the pool updated in place through permuted int64 slots",
           "- gdn-gates: the same with g (f32) and beta (bf16: gdn takes beta in the activation dtype)",
           "- fla: chunk_gated_delta_rule([1,R,..], g f32, beta f32, initial_state = the sequences' states "
           "gathered in order (FLA has no slot indices; the gather is outside the timed call), "
           "output_final_state=True (a new tensor, not written back), use_qk_l2norm_in_kernel=True, "
           "state_v_first=True, cu_seqlens int64)",
           "- flashinfer: chunk_gated_delta_rule([R,..], g = exp(g) f32 (its decay factor), beta f32, "
           "cu_seqlens int32, max_seqlen" + (", the pool in place via state_indices (int32) = "
           "initial_state = output_state" if m.get("fi_pooled") else "") + ", use_qk_l2norm_in_kernel=True); "
           f"its signature here: `{m.get('fi_signature', 'not imported')}`",
           "- split: fla's call on the long sequence, then gdn.decode on the one-token sequences, one "
           "stream, one graph",
           "- peer/gdn: the fastest of " + ", ".join(PEERS) + " over gdn's time (> 1: gdn faster)"]
    for impl, why in res["absent"].items():
        out.append(f"- {impl}: absent: {why}")
    rows = {(r["case"], r["shape"], r["impl"]): r for r in res["rows"]}
    keys = list(collections.OrderedDict.fromkeys((r["case"], r["shape"], r["num_seqs"], r["total_tokens"])
                                                 for r in res["rows"]))
    out += ["", "## Median µs per call", "",
            "| case | shape | N | tokens | " + " | ".join(impls) + " | fastest peer | peer/gdn | peer/gdn-gates |",
            "|---|---|---:|---:|" + "---:|" * len(impls) + "---|---:|---:|"]
    for case, shape, n, tokens in keys:
        us = {i: rows[(case, shape, i)]["median_us"] for i in impls if (case, shape, i) in rows}
        peers = {i: t for i, t in us.items() if i in PEERS}
        best = min(peers, key=peers.get) if peers else None
        ratio = lambda i: peers[best] / us[i] if best and i in us else None  # noqa: E731
        out.append(f"| {case} | {shape} | {n} | {tokens} | " + " | ".join(fmt(us.get(i), ".1f") for i in impls) +
                   f" | {best or '—'} | {fmt(ratio('gdn'), '.2f')} | {fmt(ratio('gdn-gates'), '.2f')} |")
    out += ["", "## Accuracy against a float64 token-by-token reference", "",
            f"Each impl once more, eagerly, on the case with every sequence cut to its first "
            f"{m['ref_max_tokens']} tokens (--ref-max-tokens; `tokens` below is what was checked); "
            "rel L2 = ||x-ref||/||ref|| over all outputs / all final states, max = max|x-ref|/max|ref|.", "",
            "| case | shape | impl | tokens | out rel L2 | out max | state rel L2 | state max | error |",
            "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for a in res["accuracy"]:
        out.append(f"| {a['case']} | {a['shape']} | {a['impl']} | {a['tokens_checked']} | "
                   f"{fmt(a.get('out_rel_l2'), '.2e')} | {fmt(a.get('out_max_rel'), '.2e')} | "
                   f"{fmt(a.get('state_rel_l2'), '.2e')} | {fmt(a.get('state_max_rel'), '.2e')} | "
                   f"{a.get('error', '')[:300]} |")
    if res["notes"]:
        out += ["", "## Notes (not measured, failures, the libraries' warnings)", ""] + [f"- {x}" for x in res["notes"]]
    return "\n".join(out) + "\n"


def plot(res, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"no plot: matplotlib: {e}"
    cases = list(collections.OrderedDict.fromkeys(r["case"] for r in res["rows"]))
    if not cases:
        return "no plot: no timings"
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.8), squeeze=False)
    impls = res["impls"]
    for ax, case in zip(axes[0], cases):
        shapes = list(collections.OrderedDict.fromkeys(r["shape"] for r in res["rows"] if r["case"] == case))
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            ys = [next((r["median_us"] for r in res["rows"] if (r["case"], r["shape"], r["impl"]) == (case, s, impl)),
                       0) for s in shapes]
            ax.bar([i + (j - (len(impls) - 1) / 2) * width for i in range(len(shapes))], ys, width, label=impl,
                   color=f"C{j}")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, fontsize=8)
        ax.set_title(case, fontsize=9)
        ax.set_ylabel("µs per call (median)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"GDN chunked prefill, f32 state, {res['meta']['device']}, gdn {res['meta']['commit']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -------- Setup and main


def load_gdn(lib_path, need_cuda):
    """The gdn package on libgdn at lib_path (pb.GdnLib sets GDN_LIBRARY and puts python/ on
    sys.path, as peer_bench.py and mtp_bench.py load it)."""
    if need_cuda:
        loaded, missing = pb.load_peers(lib_path, ["gdn"])
        if missing:
            raise RuntimeError(missing["gdn"])
    else:
        pb.GdnLib(lib_path)
    import gdn

    return gdn


def gdn_commit(given):
    if given:
        return given
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=pb.REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=pb.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except Exception:
        return os.environ.get("GDN_COMMIT", "unknown")


def new_results(args, device, fns, absent, impls):
    gdn = fns.get("gdn")
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "triton": pb.pkg_version("triton"),
                "fla-core": pb.pkg_version("fla-core"), "flashinfer-python": pb.flashinfer_version(),
                "nvidia-cutlass-dsl": pb.pkg_version("nvidia-cutlass-dsl")}
    meta = {"device": device, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "commit": gdn_commit(args.commit), "gdn_version": gdn.library_version() if gdn else None,
            "versions": {k: v for k, v in versions.items() if v},
            "gdn_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("GDN_")},
            "reps": args.reps, "ref_max_tokens": args.ref_max_tokens}
    if "flashinfer" in fns:
        meta["fi_signature"] = str(inspect.signature(fns["flashinfer"]))
        params = inspect.signature(fns["flashinfer"]).parameters
        meta["fi_pooled"] = "state_indices" in params and "output_state" in params
    return {"meta": meta, "impls": impls, "rows": [], "accuracy": [], "notes": [], "absent": dict(absent)}


def merge(dirs, stem):
    """Runs split over several device calls (--cases/--shapes): the last run's meta, and for a
    case, shape and impl measured twice the later run's numbers."""
    res, rows, acc = None, {}, {}
    for d in dirs:
        with open(os.path.join(d, stem + ".json")) as f:
            r = json.load(f)
        if res is None:
            res = r
        res["meta"], res["notes"] = r["meta"], res["notes"] + [n for n in r["notes"] if n not in res["notes"]]
        res["impls"] += [i for i in r["impls"] if i not in res["impls"]]
        res["absent"].update(r["absent"])
        rows.update({(x["case"], x["shape"], x["impl"]): x for x in r["rows"]})
        acc.update({(x["case"], x["shape"], x["impl"]): x for x in r["accuracy"]})
    res["rows"], res["accuracy"] = list(rows.values()), list(acc.values())
    done = {f"{x['case']} {x['shape']}: not run" for x in res["rows"]}
    res["notes"] = [n for n in res["notes"] if not any(n.startswith(x) for x in done)]
    return res


def cpu_selftest(args):
    """The harness on the cpu backend, no GPU: the float64 reference against libgdn's own float64
    reference backend (f64 activations and state: agreement to float64 rounding proves the reference's
    gating, head map, l2norm, scale and varlen walk), then gdn and gdn-gates with bf16 activations
    through make_call/check_accuracy (whole and cut by --ref-max-tokens), then the reports."""
    fns = {"gdn": load_gdn(args.lib, need_cuda=False)}
    shape, lens, failures = (2, 4, 32, 16), [100, 1], 0  # groups of 2, K != V: catches swapped maps
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    print(f"libgdn {fns['gdn'].library_version()} at {fns['gdn'].library_path()}")
    c64 = Case("2seq-f64", "tiny", shape, lens, "cpu", 11, act=torch.float64, state_dtype=torch.float64)
    call, result = make_call("gdn", c64, fns, backend="reference")
    call()
    ref_out, ref_state = reference(c64)
    o, st = result()
    e_out, e_state = rel_l2(o, ref_out), rel_l2(st, ref_state)
    # The out bound is 1e-7, not ~1e-15: gdn_decode_params.scale is a float, so 1/sqrt(K) reaches
    # the library rounded to f32 (1.7e-8 relative at K = 32, the same factor on every output).
    ok = e_out < 1e-7 and e_state < 1e-12
    failures += not ok
    print(f"  torch reference vs libgdn reference backend (f64): out {e_out:.1e}, state {e_state:.1e} "
          f"{'ok' if ok else 'FAIL'}")
    res = new_results(args, "cpu (self-test)", fns, {}, ["gdn", "gdn-gates"])
    for cut in (8192, 64):
        c = Case("2seq-100+1", "tiny", shape, lens, "cpu", 12)
        print(f"  bf16 activations, f32 state, lens {lens}, --ref-max-tokens {cut}:")
        rows = check_accuracy(c, ["gdn", "gdn-gates"], fns, cut, "cpu", res["notes"], lambda m: log("  " + m))
        for a in rows:
            good = a.get("out_rel_l2", 1) <= SELFTEST_TOL and a.get("state_rel_l2", 1) <= SELFTEST_TOL
            good = good and a["tokens_checked"] == sum(min(n, cut) for n in lens)
            failures += not good
        res["accuracy"] += rows
    # The report code, on eager CPU times (split and the peers need a GPU).
    c = Case("2seq-100+1", "tiny", shape, lens, "cpu", 13)
    for impl in ("gdn", "gdn-gates"):
        call, _ = make_call(impl, c, fns, backend="cpu")
        t0 = time.perf_counter()
        for _ in range(5):
            call()
        res["rows"].append({"case": c.name, "shape": "tiny", "num_seqs": c.N, "total_tokens": c.R, "impl": impl,
                            "median_us": (time.perf_counter() - t0) / 5 * 1e6})
    with tempfile.TemporaryDirectory() as d:
        d = args.out or d  # --out keeps the self-test's reports
        md, why = write_reports(d, res, args.stem)
        with open(os.path.join(d, args.stem + ".csv")) as f:
            header = f.readline().strip()
        failures += header != "case,shape,state_dtype,num_seqs,total_tokens,impl,median_us"
        failures += merge([d, d], args.stem)["rows"] != res["rows"]
        print(md + (f"({why})\n" if why else ""))
    print(f"prefill cpu self-test: {'passed' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="output folder (required unless --cpu-selftest)")
    ap.add_argument("--lib", default="build/libgdn.so", help="libgdn built with CUDA (default %(default)s)")
    ap.add_argument("--stem", default=STEM, help="output file names (default %(default)s)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma list of NxL or mixed-NxL+NxL+... (default "
                    "%(default)s)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma list of " + ",".join(pb.SHAPES))
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ",".join(IMPLS))
    ap.add_argument("--reps", type=int, default=50, help="timed graph replays per measurement (>= 30)")
    ap.add_argument("--budget-s", type=float, default=480, help="no new case/shape is started after this many "
                    "seconds; what was done is written")
    ap.add_argument("--ref-max-tokens", type=int, default=8192, help="the float64 reference (and each impl's "
                    "accuracy run) covers at most this many tokens of every sequence (default %(default)s)")
    ap.add_argument("--commit", help="gdn commit for the report (default: git rev-parse, else $GDN_COMMIT)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--cpu-selftest", action="store_true", help="the harness on libgdn's cpu backend, no GPU")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="merge the <stem>.json of earlier runs into --out")
    args = ap.parse_args(argv)
    args.cases = [x for x in args.cases.split(",") if x]
    args.shapes = [x for x in args.shapes.split(",") if x]
    args.impls = [x for x in args.impls.split(",") if x]
    bad = [s for s in args.shapes if s not in pb.SHAPES] + [i for i in args.impls if i not in IMPLS]
    for case in args.cases:
        try:
            case_lengths(case)
        except ValueError:
            bad.append(case)
    if bad:
        ap.error(f"unknown: {bad}")
    if not args.cpu_selftest and not args.out:
        ap.error("--out DIR is required")
    args.reps = max(30, args.reps)
    return args


def main(argv):
    global torch, F
    args = parse_args(argv)
    torch = pb.load_torch()
    F = torch.nn.functional
    if args.cpu_selftest:
        return cpu_selftest(args)
    if args.merge:
        print(write_reports(args.out, merge(args.merge, args.stem), args.stem)[0])
        return 0
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    if not torch.cuda.is_available():
        print("prefill_bench: torch sees no CUDA device; only --cpu-selftest runs here")
        return 2
    fns, absent = {}, {}
    for name, load in (("gdn", lambda: load_gdn(args.lib, need_cuda=True)), ("fla", import_fla_chunk),
                       ("flashinfer", import_flashinfer_prefill)):
        if name == "gdn" or name in args.impls or (name == "fla" and "split" in args.impls):
            try:
                fns[name] = load()
            except Exception as e:
                absent[name] = f"{type(e).__name__}: {str(e)[:400]}"
                log(f"{name}: absent: {absent[name]}")
    needs = {"gdn": ["gdn"], "gdn-gates": ["gdn"], "fla": ["fla"], "flashinfer": ["flashinfer"], "split": ["fla", "gdn"]}
    impls = [i for i in args.impls if all(n in fns for n in needs[i])]
    for i in args.impls:
        if i not in impls:
            absent.setdefault(i, "needs " + " and ".join(n for n in needs[i] if n not in fns))
    res = new_results(args, torch.cuda.get_device_name(), fns, absent, args.impls)
    log(f"{res['meta']['device']}, gdn {res['meta']['commit']} (libgdn {res['meta']['gdn_version']}): " +
        ", ".join(f"{k} {v}" for k, v in res["meta"]["versions"].items()))
    if "fi_signature" in res["meta"]:
        log(f"flashinfer.gdn_prefill.chunk_gated_delta_rule{res['meta']['fi_signature']}")
    for case in args.cases:
        lens = case_lengths(case)
        for shape in args.shapes:
            if time.time() - start > args.budget_s:
                res["notes"].append(f"{case} {shape}: not run, past the {args.budget_s:.0f} s budget")
                continue
            log(f"{case} {shape}: {len(lens)} sequences, {sum(lens)} tokens")
            here = [i for i in impls if i != "split" or splittable(lens)]
            c = None
            try:
                c = Case(case, shape, pb.SHAPES[shape], lens, "cuda", args.seed + len(lens) + sum(lens))
                res["accuracy"] += check_accuracy(c, here, fns, args.ref_max_tokens, "cuda", res["notes"], log)
                for impl in here:
                    try:
                        call, _ = make_call(impl, c, fns)
                        us = time_graph(call, args.reps, impl, res["notes"])
                        res["rows"].append({"case": case, "shape": shape, "num_seqs": c.N, "total_tokens": c.R,
                                            "impl": impl, "median_us": us})
                        log(f"  {impl:10s} {us:10.1f} us")
                    except Exception as e:
                        res["notes"].append(f"{case} {shape} {impl}: timing failed: {type(e).__name__}: {str(e)[:400]}")
                        log(f"  {impl:10s} timing failed: {type(e).__name__}: {str(e)[:300]}")
                        torch.cuda.synchronize()  # raises on a sticky error: the case ends in the note below
            except Exception as e:  # out of memory, a reference that failed: the next case may still run
                res["notes"].append(f"{case} {shape}: failed: {type(e).__name__}: {str(e)[:300]}")
                log(f"  failed: {type(e).__name__}: {str(e)[:300]}")
            finally:
                del c
                torch.cuda.empty_cache()
            write_reports(args.out, res, args.stem)
    md, why = write_reports(args.out, res, args.stem)
    log(f"wrote {args.out}/{args.stem}.{{csv,md,png}} and {args.stem}-accuracy.csv" + (f" ({why})" if why else ""))
    print("\n" + md, flush=True)
    return 0 if res["rows"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
