"""Where do the tests run the kernels, and how close must they then come to a computation
without FMA?

One switch, the environment variable ``TRITON_ADAM_TEST_DEVICE``:

* ``cpu`` (the default, what CI runs): CPU tensors, kernels under the Triton interpreter
  (``TRITON_INTERPRET=1`` is set here, before anything imports triton);
* ``cuda``: the same tests on ``cuda`` tensors with the kernels compiled, e.g.
  ``TRITON_ADAM_TEST_DEVICE=cuda python -m pytest -q`` on a machine with an NVIDIA GPU.
  ``TRITON_INTERPRET`` must then be unset. Tests that only make sense on the CPU (the
  interpreter's own checks, launches stubbed to time the host, gloo processes) are skipped
  with ``cpu_only``; tests that compare with Paddle need paddlepaddle (``needs_paddle``), which
  GPU machines without it skip.

Tests place what the kernels read with ``DEVICE``: random data is drawn on the CPU (the same
values in both modes) and copied there; results come back with ``.cpu()`` before any numpy or
Paddle comparison, and float64 references run on the CPU.

Tolerances (``fma_tol``). Compiled, the kernels contract ``a * b + c`` into one FMA
(``FP_FUSION``, as nvcc does for Paddle's CUDA kernels); the interpreter evaluates every
operation rounded, as do the float64 reference and Paddle's CPU kernels, and torch's CUDA
reductions sum in another order than its CPU ones. A fused operation rounds once instead of
twice, so it moves its result by at most one rounding of the product, ``u * |a * b|``
(``u = 2^-24`` in float32, ``2^-53`` in float64). An Adam step has at most 8 contractible
operations per element (decay, two per moment, the denominator, the update) and the tests
run at most 10 steps: at most 80 u relative to the operands, which are O(1) here (params and
gradients of unit scale, moments bounded by the gradients). In float32 that is 4.8e-6, so in
CUDA mode comparisons with a non-FMA computation use at least ``rtol=2e-5, atol=5e-6``
(ulps of unit-scale values; the update's division by ``sqrt(v) + eps`` amplifies a relative
error by a few units at most); in float64, 80 u is 9e-15, far below the ``1e-12`` those
comparisons already use, which stay (floor ``rtol=1e-12, atol=1e-13``). A wrong term of the
math (a missing decay, a pow off by one step) is above 1e-3 relative and fails either way.
Comparisons between two of the library's own compiled paths (per-tensor and multi-tensor,
a run and its resume) stay bitwise: both contract the same expressions in the same way.
"""

from __future__ import annotations

import os

ENV_VAR = "TRITON_ADAM_TEST_DEVICE"
_MODES = ("cpu", "cuda")

_mode = os.environ.get(ENV_VAR, "").strip().lower() or "cpu"
if _mode not in _MODES:
    raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(_MODES)}")
CUDA_MODE = _mode == "cuda"

# Triton reads TRITON_INTERPRET when a kernel is defined, so this must precede every import
# of triton (conftest.py imports this module first; the worker scripts too).
if CUDA_MODE:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(f"{ENV_VAR}=cuda runs the kernels compiled: unset TRITON_INTERPRET")
else:
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = torch.device("cuda" if CUDA_MODE else "cpu")

# GPU machines may lack paddlepaddle: the tests that compare with it are skipped there.
HAVE_PADDLE = importlib.util.find_spec("paddle") is not None
needs_paddle = pytest.mark.skipif(not HAVE_PADDLE, reason="paddlepaddle is not installed")


def import_paddle():
    """``paddle`` set to the CPU (every comparison with Paddle runs there), or None when it is
    not installed (then the tests marked ``needs_paddle`` are skipped)."""
    if not HAVE_PADDLE:
        return None
    paddle = importlib.import_module("paddle")
    paddle.set_device("cpu")
    return paddle


def cpu_only(reason: str) -> pytest.MarkDecorator:
    """Skip in CUDA mode: the test checks something only the CPU run has (``reason``)."""
    return pytest.mark.skipif(CUDA_MODE, reason=f"CPU mode only: {reason}")


def worker_env(**extra: str) -> dict[str, str]:
    """The environment for a test's helper process: same mode as this process."""
    env = dict(os.environ, **extra)
    if CUDA_MODE:
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


def to_numpy(t):
    """A numpy array of ``t`` wherever it lives (torch tensors come back to the host)."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return t.numpy()


def synchronize() -> None:
    """Wait for the device (a no-op on the CPU): timings must include the kernels."""
    if CUDA_MODE:
        torch.cuda.synchronize()


# Host-to-device copies of tables the host built (launch tables, hyper-parameter rows). perf/
# counters.py's DeviceOps counts every dispatched aten operation on any tensor as a would-be
# kernel launch, which is right on the CPU, where such a copy to "the device" dispatches
# nothing; in CUDA mode it dispatches these, which are DMA transfers, not kernels.
UPLOAD_OPS = frozenset({"_to_copy", "copy_", "_pin_memory", "pin_memory"})


def kernel_ops(ops: dict[str, int]) -> dict[str, int]:
    """The operations of a ``DeviceOps`` count that launch kernels in this mode."""
    return {k: n for k, n in ops.items() if not (CUDA_MODE and k in UPLOAD_OPS)}


# The least tolerance of a comparison with a non-FMA computation in CUDA mode, per compute
# dtype (the derivation is in the module docstring).
FMA_FLOOR = {torch.float32: dict(rtol=2e-5, atol=5e-6),
             torch.float64: dict(rtol=1e-12, atol=1e-13)}


def fma_tol(dtype, rtol: float, atol: float) -> dict[str, float]:
    """``dict(rtol=, atol=)`` for comparing a kernel's ``dtype`` results with a computation
    without FMA (float64 reference, Paddle, torch on the CPU): as given in CPU mode, at least
    ``FMA_FLOOR`` in CUDA mode. ``dtype``: a torch dtype or its name; fp16/bf16 values are
    computed in float32."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not CUDA_MODE:
        return dict(rtol=rtol, atol=atol)
    floor = FMA_FLOOR[torch.float64 if dtype == torch.float64 else torch.float32]
    return dict(rtol=max(rtol, floor["rtol"]), atol=max(atol, floor["atol"]))
