#!/usr/bin/env python3
"""The decode as a model runs it, gdn (with and without programmatic dependent launch) beside
FlashInfer (issue 9, item 2).

A CUDA graph of L layers; each layer is a producer that writes q, k, v, a, b (one
torch._foreach_copy_ launch, standing in for the projection before the GDN step), then the
decode on that layer's own state pool and slots. Time per layer = graph time / L, median of
replays. impls: producer (alone), gdn, gdn-pdl (gdn_decode_params.pdl = 1), flashinfer
(gated_delta_rule_decode_pretranspose, pool + int32 indices; it has no PDL on sm_90).

torch's copy kernel does not trigger its dependents early, so gdn-pdl here can only overlap
the decode's launch and its slot/state loads with the producer's last blocks and its memory
flush; bench/pdl_layers.cu measures the case of a PDL-aware producer.

    python3 bench/peers/layer_bench.py --out DIR [--lib build/libgdn.so] [--layers 36]
writes DIR/layers-h200.csv: shape,state_dtype,N,layers,impl,us_per_layer
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_bench as pb  # noqa: E402

torch = None


def run(args):
    global torch
    torch = pb.load_torch()
    if args.layers < pb.MIN_CALLS:
        raise SystemExit(f"--layers must be at least {pb.MIN_CALLS} (one graph holds whole layer passes)")
    loaded, missing = pb.load_peers(args.lib, ["gdn", "flashinfer"])
    for impl, why in missing.items():
        print(f"{impl}: NOT AVAILABLE: {why}", flush=True)
    rows = []
    dev = "cuda"
    for shape_name in args.shapes:
        shape = pb.SHAPES[shape_name]
        H, HV, K, V = shape
        for state in args.states:
            for n in args.ns:
                gen = torch.Generator(device=dev).manual_seed(n * 31 + len(state))
                src = pb.random_activations(shape, n, dev, gen)
                act = {k: torch.empty_like(src[k]) for k in ("q", "k", "v", "a", "b")}
                act["A_log"], act["dt_bias"] = src["A_log"], src["dt_bias"]
                names = ("q", "k", "v", "a", "b")
                perm = torch.randperm(n, generator=gen, device=dev)
                layers = []
                try:
                    for _ in range(args.layers):
                        layers.append({"pool": pb.random_pool(shape, n, state, dev, gen, sigma=0.05),
                                       "slots64": perm.clone(), "slots32": perm.to(torch.int32),
                                       "out": torch.empty_like(act["v"])})
                except torch.cuda.OutOfMemoryError:
                    print(f"{shape_name} {state} N={n}: not enough memory for {args.layers} layers", flush=True)
                    layers = []
                    torch.cuda.empty_cache()
                    continue

                def producer():
                    torch._foreach_copy_([act[k] for k in names], [src[k] for k in names])

                impls = ["producer"] + (["gdn", "gdn-pdl"] if "gdn" in loaded else []) + \
                        (["flashinfer"] if "flashinfer" in loaded else [])
                for impl in impls:
                    if impl.startswith("gdn"):
                        lib = loaded["gdn"]
                        params = [pb.gdn_params(lib, shape, act, L["pool"], L["slots64"], L["out"], "cuda",
                                                pdl=1 if impl == "gdn-pdl" else 0) for L in layers]

                    def layer_step(i):
                        producer()
                        if impl.startswith("gdn"):
                            p = params[i]
                            p.stream = torch.cuda.current_stream().cuda_stream
                            lib.decode(p)
                        elif impl == "flashinfer":
                            L = layers[i]
                            pb.flashinfer_call(loaded["flashinfer"], act, L["pool"], L["slots32"], L["out"])

                    try:  # peer_bench's graph timing: one graph of all layers, time per call = per layer
                        us, _ = pb.time_calls(layer_step, args.layers, args.reps, collections.deque())
                    except Exception as e:  # a peer that fails says why, the rest goes on
                        print(f"{shape_name} {state} N={n} {impl}: failed: {type(e).__name__}: {str(e)[:300]}",
                              flush=True)
                        torch.cuda.synchronize()
                        continue
                    rows.append((shape_name, state, n, args.layers, impl, us))
                    print(f"{shape_name:12s} {state:4s} N={n:5d} {impl:10s} {us:9.3f} us/layer", flush=True)
                del layers
                torch.cuda.empty_cache()
    return rows


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lib", default="build/libgdn.so")
    ap.add_argument("--shapes", default="qwen3-next,contest")
    ap.add_argument("--states", default="f32,bf16")
    ap.add_argument("--ns", default="1,4,16,64,256")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    args.shapes = args.shapes.split(",")
    args.states = args.states.split(",")
    args.ns = [int(x) for x in args.ns.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = run(args)
    path = os.path.join(args.out, "layers-h200.csv")
    with open(path, "w") as f:
        f.write(f"# device: {torch.cuda.get_device_name()}; commit: {os.environ.get('GDN_COMMIT', 'unknown')}; "
                f"producer: torch._foreach_copy_ of q, k, v, a, b; {args.layers} layers, own pools\n")
        f.write("shape,state_dtype,N,layers,impl,us_per_layer\n")
        for r in rows:
            f.write(f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]:.3f}\n")
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
