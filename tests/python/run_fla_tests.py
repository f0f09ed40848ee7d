#!/usr/bin/env python3
"""Runs FLA's own tests of chunk_gated_delta_rule and fused_recurrent_gated_delta_rule
(tests/ops/test_gdn.py of flash-linear-attention) against gdn.compat on the CPU.

Not part of CI: it needs torch, einops, pytest and FLA's sources (never committed here).

    # FLA's sources into the ignored .peers/ folder (any checkout or sdist of
    # flash-linear-attention / fla-core whose tests/ops/test_gdn.py is there):
    git clone https://github.com/fla-org/flash-linear-attention .peers/flash-linear-attention
    python3 -m pip install torch einops pytest
    python3 tests/python/run_fla_tests.py                    # FLA's tests as they are
    python3 tests/python/run_fla_tests.py --forward-only     # their forward checks only
    python3 tests/python/run_fla_tests.py -k "varlen" --fla PATH/TO/flash-linear-attention

How FLA's test file is run, unchanged, with only these substitutions:
  - fla.ops.gated_delta_rule's chunk_gated_delta_rule and fused_recurrent_gated_delta_rule are
    gdn.compat's; everything else the file imports from FLA is FLA's own Python: the float32
    reference naive_recurrent_gated_delta_rule (fla/ops/gated_delta_rule/naive.py), naive_gdn_gate
    (taken out of fla/ops/gated_delta_rule/gate.py, whose other functions are Triton kernels),
    and assert_close (fla/utils/_testing.py). FLA's package itself is not imported: it needs
    Triton and a GPU. The Triton-only helpers the file imports (fused_gdn_gate,
    prepare_wy_repr_bwd, recompute_w_u_fwd) are stand-ins raising NotImplementedError; only the
    tests not run here (test_gate, test_prepare_wy_repr_bwd_no_g) call them.
  - fla.utils.device is "cpu" (FLA's tests move every tensor to it), and the GPU-model flags
    (IS_NVIDIA_HOPPER, IS_INTEL_ALCHEMIST, ...) are False.
  - FLA_DISABLE_BACKEND_DISPATCH=1, as in FLA's own Triton baseline run, so that test_chunk's
    GQA cases (HV != H), which skip otherwise, run.
Only the tests that call the two functions are selected (test_fused_recurrent*, test_chunk*,
not the FlashQLA and Blackwell ones, which need those GPUs).

FLA's tests check gradients too; gdn.compat is forward only (its outputs carry no gradient), so
those tests fail at their .backward() as they are. --forward-only runs the same tests with two
more substitutions: .backward() of a tensor that does not require grad does nothing, and
assert_close skips the gradient comparisons (names starting with "d": dq, dk, dv, db, dg, dh0,
dA, ...). The forward comparisons (o, ht) run with FLA's own tolerances.

Prints one line per case and "N passed, N failed, N skipped"; exits 1 if any case failed.
tests/python/FLA_TESTS.md holds the last recorded results.
"""
import argparse
import ast
import importlib.util
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FLA = REPO / ".peers" / "flash-linear-attention"
TESTS = ("test_fused_recurrent", "test_fused_recurrent_state_v_first", "test_fused_recurrent_gate_in_kernel",
         "test_fused_recurrent_beta_sigmoid_in_kernel", "test_fused_recurrent_gate_in_kernel_varlen", "test_chunk",
         "test_chunk_with_chunk_size", "test_chunk_beta_sigmoid_in_kernel", "test_chunk_state_v_first",
         "test_chunk_varlen", "test_chunk_varlen_prefill", "test_chunk_gate_in_kernel",
         "test_chunk_gate_in_kernel_gqa", "test_chunk_gate_in_kernel_varlen")
CHECKS = []  # the assert_close comparisons of the case running: "o 1.2e-04/0.005" (error ratio/FLA's bound)
GPU_FLAGS = ("IS_AMD", "IS_ARM", "IS_INTEL", "IS_INTEL_ALCHEMIST", "IS_NVIDIA", "IS_NPU", "IS_NVIDIA_BLACKWELL",
             "IS_NVIDIA_HOPPER", "IS_NVIDIA_SM100", "IS_NVIDIA_SM120", "IS_TF32_SUPPORTED", "IS_GATHER_SUPPORTED",
             "IS_TMA_SUPPORTED")


def _module(name, **attributes):
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that submodules can be registered under it
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _load_file(name, path):
    """FLA's own module at `path`, imported as `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _function_from(path, function_name, namespace):
    """One function of a file whose module cannot be imported here (gate.py imports Triton)."""
    tree = ast.parse(Path(path).read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function_name:
            code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
            exec(code, namespace)
            return namespace[function_name]
    raise LookupError(f"{path} has no function {function_name}")


def _triton_only(name):
    def stand_in(*args, **kwargs):
        raise NotImplementedError(f"{name} is one of FLA's Triton kernels; it is not run here")
    stand_in.__name__ = name
    return stand_in


def install_fla(fla_root, forward_only):
    """The fla modules test_gdn.py imports, with gdn.compat in the place of FLA's two functions."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "python"))
    from gdn import compat

    ops_dir = fla_root / "fla" / "ops" / "gated_delta_rule"
    _module("fla")
    _module("fla.ops")
    package = _module("fla.ops.gated_delta_rule")
    naive = _load_file("fla.ops.gated_delta_rule.naive", ops_dir / "naive.py")
    naive_gdn_gate = _function_from(ops_dir / "gate.py", "naive_gdn_gate", {"torch": torch, "F": F})
    _module("fla.ops.gated_delta_rule.gate", naive_gdn_gate=naive_gdn_gate,
            fused_gdn_gate=_triton_only("fused_gdn_gate"))
    _module("fla.ops.gated_delta_rule.wy_fast", prepare_wy_repr_bwd=_triton_only("prepare_wy_repr_bwd"),
            recompute_w_u_fwd=_triton_only("recompute_w_u_fwd"))
    package.__dict__.update(chunk_gated_delta_rule=compat.chunk_gated_delta_rule,
                            chunk_gdn=compat.chunk_gated_delta_rule,
                            fused_recurrent_gated_delta_rule=compat.fused_recurrent_gated_delta_rule,
                            fused_recurrent_gdn=compat.fused_recurrent_gated_delta_rule,
                            naive=naive, naive_recurrent_gated_delta_rule=naive.naive_recurrent_gated_delta_rule,
                            naive_chunk_gated_delta_rule=naive.naive_chunk_gated_delta_rule)
    utils = _module("fla.utils", device="cpu", **{flag: False for flag in GPU_FLAGS})
    utils.__path__ = [str(fla_root / "fla" / "utils")]
    _load_file("fla.utils._config", fla_root / "fla" / "utils" / "_config.py")
    testing = _load_file("fla.utils._testing", fla_root / "fla" / "utils" / "_testing.py")
    fla_assert_close = testing.assert_close

    def assert_close(prefix, ref, tri, ratio, *args, **kwargs):
        """FLA's assert_close, noting each comparison and its outcome for the report."""
        name = prefix.strip()
        if forward_only and name.startswith("d"):
            return None  # a gradient: gdn.compat computes none
        try:
            measured = f"{name} {testing.get_err_ratio(ref, tri):.1e}/{ratio:g}"
        except Exception:  # a None or mis-shaped argument: FLA's own call below says what
            measured = name
        try:
            result = fla_assert_close(prefix, ref, tri, ratio, *args, **kwargs)
        except AssertionError:
            CHECKS.append(f"{measured} FAILED")
            raise
        CHECKS.append(measured)
        return result

    utils.assert_close = assert_close
    if forward_only:
        tensor_backward = torch.Tensor.backward

        def backward(self, *args, **kwargs):
            if not self.requires_grad:
                return None  # gdn.compat's outputs: no graph to go back through
            return tensor_backward(self, *args, **kwargs)

        torch.Tensor.backward = backward


class Collector:
    """A pytest plugin that keeps each case's outcome and the first line of its failure."""

    def __init__(self, verbose):
        self.results = []
        self.verbose = verbose

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            reason = ""
            if report.outcome == "failed":
                text = str(report.longrepr.reprcrash.message) if hasattr(report.longrepr, "reprcrash") else \
                    str(report.longrepr)
                reason = text.strip().splitlines()[0] if text.strip() else ""
            elif report.outcome == "skipped":
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if report.outcome == "failed" and report.when == "call":
                reason += f" (comparisons before it: {', '.join(CHECKS) if CHECKS else 'none'})"
            elif report.outcome == "passed" and self.verbose:
                reason = ", ".join(CHECKS)
            self.results.append((report.nodeid.split("::", 1)[-1], report.outcome, reason))
        if report.when == "teardown":
            CHECKS.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fla", type=Path, default=Path(os.environ.get("GDN_FLA_SOURCES", DEFAULT_FLA)),
                        help="a flash-linear-attention source tree (default .peers/flash-linear-attention)")
    parser.add_argument("--forward-only", action="store_true",
                        help="skip FLA's gradient checks (gdn.compat is forward only)")
    parser.add_argument("-k", default=None, help="pytest -k expression to narrow the cases")
    parser.add_argument("-x", action="store_true", help="stop at the first failure")
    parser.add_argument("-v", action="store_true", help="print each passing case's comparisons (error ratio/bound)")
    args = parser.parse_args()
    test_file = args.fla / "tests" / "ops" / "test_gdn.py"
    if not test_file.is_file():
        sys.exit(f"{test_file} not found: put FLA's sources there (see the top of this script) or pass --fla")
    missing = [name for name in ("torch", "einops", "pytest") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"this runner needs torch, einops and pytest; missing: {', '.join(missing)}")
    import pytest
    os.environ.setdefault("FLA_DISABLE_BACKEND_DISPATCH", "1")
    install_fla(args.fla, args.forward_only)
    selection = " or ".join(TESTS)  # -k matches substrings; the exact names are filtered below
    pytest_args = [str(test_file), "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                   "--rootdir", str(args.fla), "-k", selection if args.k is None else f"({selection}) and ({args.k})"]
    if args.x:
        pytest_args.append("-x")
    collector = Collector(args.v)
    pytest.main(pytest_args, plugins=[collector])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    print(f"\ngdn.compat against FLA's {test_file.relative_to(args.fla)}"
          f"{' (forward checks only)' if args.forward_only else ''}:")
    for case, outcome, reason in collector.results:
        if case.split("[", 1)[0] not in TESTS:
            continue
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"  {outcome.upper():7} {case}" + (f"  -- {reason}" if reason else ""))
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
