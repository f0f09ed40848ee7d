#!/usr/bin/env python3
"""A serving engine's decode loop over Gated DeltaNet layers, with gdn doing the recurrence.

Each layer owns a state pool [slots, HV, V, K]; each running sequence owns one slot. The batch
has a fixed size (as a CUDA graph needs), and the positions without a sequence carry slot -1:
gdn writes zeros for them and leaves every state alone. q, k, v are slices of one packed
projection and a, b of another, as an engine's in-projection produces them. Each step is also
run on libgdn's float64 reference backend, and the script prints the largest difference.

    python3 examples/decode_loop.py                          # NumPy on the CPU
    python3 examples/decode_loop.py --array torch            # torch on the CPU (bf16 with --dtype bf16)
    python3 examples/decode_loop.py --device cuda --graph    # torch on the GPU, each step one CUDA graph replay

Run from the repository after `make lib` (or with the gdn package installed).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import gdn
except ImportError:  # running from the repository without installing: use python/ and build/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import gdn

SHAPES = {"contest": (4, 8, 128, 128), "qwen3-next": (16, 32, 128, 128), "small": (2, 4, 32, 32)}  # H, HV, K, V


class Arrays:
    """NumPy or torch, on the CPU or a GPU: the few array operations the loop needs."""

    def __init__(self, kind, device, dtype):
        self.kind, self.device = kind, device
        if kind == "torch":
            import torch

            self.torch = torch
            self.dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
        else:
            if dtype == "bf16":
                sys.exit("NumPy has no bfloat16: use --dtype f32 or f16, or --array torch")
            self.dtype = {"f32": np.float32, "f16": np.float16}[dtype]

    def from_numpy(self, x, dtype=None):
        if self.kind == "numpy":
            return np.ascontiguousarray(x, dtype=dtype or self.dtype)
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype or self.dtype)

    def float32(self, x):
        return self.from_numpy(x, np.float32 if self.kind == "numpy" else self.torch.float32)

    def indices(self, x):
        return self.from_numpy(np.asarray(x, np.int64), np.int64 if self.kind == "numpy" else self.torch.int64)

    def host64(self, x):
        """The values the kernel saw, as float64 NumPy (the reference runs on these)."""
        if self.kind == "numpy":
            return np.asarray(x, np.float64)
        return x.detach().double().cpu().numpy()

    def empty_like(self, x):
        return np.empty_like(x) if self.kind == "numpy" else self.torch.empty_like(x)

    def copy_into(self, dst, src):
        if self.kind == "numpy":
            dst[...] = src
        else:
            dst.copy_(src)


def split_projections(qkv, ba, h, hv, k, v):
    """q, k, v, a, b as strided views into the packed projections (no copy)."""
    n = qkv.shape[0]
    return (qkv[:, :h * k].reshape(n, h, k), qkv[:, h * k:2 * h * k].reshape(n, h, k),
            qkv[:, 2 * h * k:].reshape(n, hv, v), ba[:, hv:], ba[:, :hv])


class Layer:
    """One GDN layer of the engine: parameters, the state pool, and its float64 twin."""

    def __init__(self, arrays, rng, num_slots, hv, k, v):
        self.A_log = np.log(rng.uniform(1, 16, hv)).astype(np.float32)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), hv))
        self.dt_bias = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
        self.params = (arrays.float32(self.A_log), arrays.float32(self.dt_bias))
        self.pool = arrays.float32(np.zeros((num_slots, hv, v, k), np.float32))
        self.reference_pool = np.zeros((num_slots, hv, v, k))

    def clear_slot(self, arrays, slot):
        """A new sequence starts from a zero state (an engine would prefill it instead)."""
        self.pool[slot] = 0
        self.reference_pool[slot] = 0


def step_inputs(arrays, rng, batch, h, hv, k, v):
    """This step's in-projection outputs for one layer: packed [N, 2HK+HV*V] and [N, 2HV]."""
    qkv = arrays.from_numpy(rng.standard_normal((batch, 2 * h * k + hv * v)).astype(np.float32))
    ba = arrays.from_numpy(rng.standard_normal((batch, 2 * hv)).astype(np.float32))
    return qkv, ba


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--array", choices=("numpy", "torch"), default="numpy")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("f32", "f16", "bf16"), default=None,
                        help="activation dtype (default f32 on the CPU, bf16 on the GPU)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="contest")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--graph", action="store_true", help="capture one step in a CUDA graph and replay it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda":
        args.array = "torch"
    if args.graph and args.device != "cuda":
        sys.exit("--graph needs --device cuda")
    arrays = Arrays(args.array, args.device, arrays_dtype(args))
    h, hv, k, v = SHAPES[args.shape]
    rng = np.random.default_rng(args.seed)
    batch, num_slots = 8, 12

    # Which slot each batch position's sequence owns; -1 = no sequence there (padding).
    slots_of_position = np.array([3, -1, 0, 7, -1, 5, 11, -1])
    layers = [Layer(arrays, rng, num_slots, hv, k, v) for _ in range(args.layers)]
    print(f"gdn {gdn.__version__} ({gdn.library_path()}): {args.array} on {args.device}, activations "
          f"{arrays_dtype(args)}, H={h} HV={hv} K={k} V={v}, "
          f"{args.layers} layers, batch {batch} with {int((slots_of_position < 0).sum())} padding rows")

    # Static buffers: what a CUDA graph replays on. Eager steps use them the same way.
    inputs = [step_inputs(arrays, rng, batch, h, hv, k, v) for _ in layers]
    outs = [arrays.from_numpy(np.zeros((batch, hv, v), np.float32)) for _ in layers]
    slots = arrays.indices(slots_of_position)

    def decode_step():
        for layer, (qkv, ba), out in zip(layers, inputs, outs):
            gdn.decode(*split_projections(qkv, ba, h, hv, k, v), *layer.params, layer.pool, slots, out=out)

    graph = capture(arrays, decode_step) if args.graph else None
    for layer in layers:  # the graph's warm-up ran a step: start from zero states again
        layer.pool[...] = 0
    worst = 0.0
    for step in range(args.steps):
        if step == args.steps // 2:  # a sequence finishes, another one starts in a fresh slot
            slots_of_position[3], slots_of_position[7] = -1, 9
            arrays.copy_into(slots, arrays.indices(slots_of_position))
            for layer in layers:
                layer.clear_slot(arrays, 9)
        for (qkv, ba) in inputs:
            fresh_qkv, fresh_ba = step_inputs(arrays, rng, batch, h, hv, k, v)
            arrays.copy_into(qkv, fresh_qkv)
            arrays.copy_into(ba, fresh_ba)
        if graph:
            graph.replay()
        else:
            decode_step()
        norms, diffs = [], []
        for layer, (qkv, ba), out in zip(layers, inputs, outs):
            ref_out = reference_step(arrays, layer, qkv, ba, slots_of_position, h, hv, k, v)
            got = arrays.host64(out)
            norms.append(np.linalg.norm(got[slots_of_position >= 0]))
            diffs.append(np.abs(got - ref_out).max() / max(np.abs(ref_out).max(), 1e-30))
            assert np.all(got[slots_of_position < 0] == 0), "padding rows must be zeros"
        worst = max(worst, *diffs)
        print(f"step {step}: |out| per layer " + " ".join(f"{x:7.3f}" for x in norms)
              + f"   max|out - ref|/max|ref| {max(diffs):.2e}")
    state_diff = max(np.abs(arrays.host64(layer.pool) - layer.reference_pool).max() for layer in layers)
    print(f"after {args.steps} steps: largest output difference {worst:.2e} (relative), "
          f"largest state difference {state_diff:.2e} (absolute)")
    # float32 activations agree to float32 rounding; 16-bit ones to theirs (SPEC 6)
    limit = 1e-4 if arrays_dtype(args) == "f32" else 1e-2
    if not worst <= limit:
        sys.exit(f"FAILED: output difference {worst:.2e} above {limit:g}")


def arrays_dtype(args):
    return args.dtype or ("bf16" if args.device == "cuda" else "f32")


def reference_step(arrays, layer, qkv, ba, slots_of_position, h, hv, k, v):
    """The same step on the float64 reference backend, on float64 copies of the inputs."""
    q, kk, vv, a, b = split_projections(arrays.host64(qkv), arrays.host64(ba), h, hv, k, v)
    return gdn.decode(q, kk, vv, a, b, layer.A_log, layer.dt_bias, layer.reference_pool, slots_of_position,
                      backend="reference")


def capture(arrays, decode_step):
    """decode_step captured in a CUDA graph (after a warm-up run on a side stream)."""
    torch = arrays.torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step()
    return graph


if __name__ == "__main__":
    main()
