#!/usr/bin/env python3
"""gdn's cuda varlen prefill alone, for comparing builds of the chunked kernel (issue 13):

    python3 bench/prefill_tune.py [--lib build/libgdn.so] [--cases 1x4096,4x4096,1x32768,mixed]
                                  [--shapes qwen3-next,contest] [--reps 20] [--csv OUT.csv]

Each case is one gdn.forward call (bf16 q/k/v, raw gates, l2 norm in the call, f32 vk pool)
captured in a CUDA graph; the median of `reps` replays timed with CUDA events, as the peer
harness times (bench/peers/prefill_bench.py has the side by side with FLA and FlashInfer). With
GDN_PREFILL_PRECISE=1 in the environment the chunked products take three bf16 terms.
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

SHAPES = {"qwen3-next": (16, 32, 128, 128), "contest": (4, 8, 128, 128)}
CASES = {"1x4096": [4096], "4x4096": [4096] * 4, "1x32768": [32768], "mixed": [8192] + [1] * 256}


def run_case(torch, gdn, shape, lengths, reps):
    H, HV, K, V = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    rows, n = sum(lengths), len(lengths)

    def normal(*size):
        return torch.randn(*size, generator=g, device=dev).to(torch.bfloat16)

    q, k, v = normal(rows, H, K), normal(rows, H, K), normal(rows, HV, V)
    a, b = normal(rows, HV), normal(rows, HV)
    A_log = torch.log1p(15 * torch.rand(HV, generator=g, device=dev))
    dt_bias = -3 + torch.rand(HV, generator=g, device=dev)
    pool = torch.randn(n, HV, V, K, generator=g, device=dev) * 0.1
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int64, device=dev)
    slots = torch.arange(n, dtype=torch.int64, device=dev)
    out = torch.empty(rows, HV, V, dtype=torch.bfloat16, device=dev)
    longest = max(lengths)

    def call():
        gdn.forward(q, k, v, a, b, A_log, dt_bias, pool, cu_seqlens=cu, slot_indices=slots, out=out,
                    max_seqlen=longest, backend="cuda")

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.path.join(HERE, "..", "build", "libgdn.so"))
    ap.add_argument("--cases", default="1x4096,4x4096,1x32768,mixed")
    ap.add_argument("--shapes", default="qwen3-next,contest")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--csv")
    ap.add_argument("--label", default=os.environ.get("GDN_PREFILL_LABEL", "gdn"))
    args = ap.parse_args(argv)
    os.environ["GDN_LIBRARY"] = os.path.abspath(args.lib)
    import torch
    import gdn

    lines = []
    for shape in args.shapes.split(","):
        for case in args.cases.split(","):
            us = run_case(torch, gdn, SHAPES[shape], CASES[case], args.reps)
            line = f"{case},{shape},f32,{len(CASES[case])},{sum(CASES[case])},{args.label},{us:.1f}"
            print(line, flush=True)
            lines.append(line)
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a") as f:
            if new:
                f.write("case,shape,state_dtype,num_seqs,total_tokens,impl,median_us\n")
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
