"""Does every kernel step cleanly: no out-of-bounds access, no shared-memory race?

A small program for ``compute-sanitizer`` (``perf/gpu_check.py`` runs it under ``--tool
memcheck`` and ``--tool racecheck``): it steps every kernel of the library, through the
optimizer as a user would, on small tensors with odd sizes (1, 17, a block + 1, several
blocks) and views at odd offsets:

* the dense update (one launch per tensor), fp32, with L2 decay;
* the multi-tensor update, fp32 AdamW, including an unaligned view (the scalar fallback);
* amsgrad, both paths;
* fp64, both paths;
* bf16 parameters with fp32 master weights, both paths;
* AMP: an fp16 step with a loss scale, then a step skipped by the overflow flag;
* global-norm clipping (the norm pass and the finalize), both paths, and ClipGradByNorm;
* lazy rows: an ``Embedding(sparse=True)`` gradient with duplicate rows, dense params beside.

Each case takes 3 steps, then checks that every parameter is finite and moved; it prints one
line per case and exits 1 if any check fails (the sanitizer's own findings make it exit with
its ``--error-exitcode``). Run it directly as well::

    compute-sanitizer --tool memcheck --error-exitcode 97 python perf/sanitize_steps.py
    python perf/sanitize_steps.py --device cpu     # the same steps under the interpreter

Under the sanitizer, set ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` (gpu_check.py does): each tensor is
then an allocation of its own, so an access past its end is outside any allocation, which
memcheck reports (inside PyTorch's cached blocks it would land in a neighbour).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

SIZES = [(1,), (17,), (1025,), (3, 1367)]  # 1, odd, a block + 1, several blocks (2-D)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda when available, else cpu (under the interpreter)")
    parser.add_argument("--steps", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"  # no CUDA: the interpreter (triton not imported yet)
    import triton_adam

    torch.manual_seed(0)
    failed = 0
    for name, case in CASES.items():
        try:
            case(torch, triton_adam, device, args.steps)
            print(f"ok      {name}", flush=True)
        except Exception as exc:  # one line per case; the others still run
            failed += 1
            print(f"FAILED  {name}: {type(exc).__name__}: {exc}", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{len(CASES) - failed}/{len(CASES)} cases stepped on {device}")
    return 1 if failed else 0


def _params(torch, device: str, dtype=None, shapes=SIZES) -> list:
    dtype = dtype or torch.float32
    return [torch.nn.Parameter(torch.randn(s, device=device).to(dtype)) for s in shapes]


def _run(torch, params: list, opt, steps: int, grad_dtype=None, step_kwargs=None) -> None:
    """``steps`` steps with fresh gradients, then: every param finite and moved."""
    before = [p.detach().clone() for p in params]
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn_like(p, dtype=grad_dtype or p.dtype) * 0.1)
        opt.step(**(step_kwargs or {}))
    _check_moved(torch, params, before)


def _check_moved(torch, params: list, before: list) -> None:
    for i, (p, b) in enumerate(zip(params, before)):
        if not bool(torch.isfinite(p).all()):
            raise AssertionError(f"param {i} {tuple(p.shape)} is not finite")
        if bool(torch.equal(p.detach(), b)):
            raise AssertionError(f"param {i} {tuple(p.shape)} did not move")


def dense(torch, ta, device: str, steps: int) -> None:
    ps = _params(torch, device)
    _run(torch, ps, ta.Adam(1e-2, parameters=ps, weight_decay=ta.L2Decay(1e-3)), steps)


def multi_tensor(torch, ta, device: str, steps: int) -> None:
    base = torch.randn(4001, device=device)
    ps = _params(torch, device) + [torch.nn.Parameter(base[3:2003])]  # unaligned view
    assert ps[-1].data_ptr() % 16 != 0
    _run(torch, ps, ta.AdamW(1e-2, parameters=ps, weight_decay=0.01, use_multi_tensor=True),
         steps)


def amsgrad(torch, ta, device: str, steps: int) -> None:
    for multi in (False, True):
        ps = _params(torch, device)
        _run(torch, ps, ta.Adam(1e-2, parameters=ps, amsgrad=True,
                                per_tensor_launches=not multi), steps)


def fp64(torch, ta, device: str, steps: int) -> None:
    for multi in (False, True):
        ps = _params(torch, device, torch.float64)
        _run(torch, ps, ta.AdamW(1e-2, parameters=ps, amsgrad=multi,
                                 per_tensor_launches=not multi), steps)


def bf16_master(torch, ta, device: str, steps: int) -> None:
    for multi in (False, True):
        ps = _params(torch, device, torch.bfloat16)
        _run(torch, ps, ta.Adam(1e-2, parameters=ps, multi_precision=True,
                                per_tensor_launches=not multi), steps)


def fewer_bytes(torch, ta, device: str, steps: int) -> None:
    """The byte-saving modes: remainder masters with bf16 moments (amsgrad: the third moment
    buffer too), and stochastically rounded bf16 params with bf16 moments."""
    for multi in (False, True):
        for kw in (dict(multi_precision=True, master_weight_format="remainder",
                        moment_dtype=torch.bfloat16, amsgrad=multi),
                   dict(stochastic_rounding=True, moment_dtype=torch.bfloat16, seed=7)):
            ps = _params(torch, device, torch.bfloat16)
            _run(torch, ps, ta.Adam(1e-2, parameters=ps, per_tensor_launches=not multi, **kw),
                 steps)


def amp_skip(torch, ta, device: str, steps: int) -> None:
    """A scaled fp16 step (master weights), then a step the overflow flag skips entirely."""
    for multi in (False, True):
        ps = _params(torch, device, torch.float16)
        opt = ta.Adam(1e-2, parameters=ps, multi_precision=True, per_tensor_launches=not multi)
        scale = torch.full((1,), 1024.0, device=device)
        ok, inf = torch.zeros(1, device=device), torch.ones(1, device=device)
        _run(torch, ps, opt, steps, step_kwargs=dict(grad_scale=scale, found_inf=ok))
        before = [p.detach().clone() for p in ps]
        for p in ps:
            p.grad = torch.full_like(p, float("inf"))
        opt.step(grad_scale=scale, found_inf=inf)
        if not all(bool(torch.equal(p.detach(), b)) for p, b in zip(ps, before)):
            raise AssertionError("a step with found_inf set changed a parameter")


def clipping(torch, ta, device: str, steps: int) -> None:
    """Global-norm clipping (norm pass + finalize) on both paths, ClipGradByNorm, and a
    parameter left out of clipping."""
    for multi, clip in ((False, ta.ClipGradByGlobalNorm(0.5)),
                        (True, ta.ClipGradByGlobalNorm(0.5, auto_skip_clip=True)),
                        (True, ta.ClipGradByNorm(0.1))):
        ps = _params(torch, device)
        ta.set_param_attr(ps[1], need_clip=False)
        _run(torch, ps, ta.AdamW(1e-2, parameters=ps, grad_clip=clip,
                                 per_tensor_launches=not multi), steps)


def lazy_rows(torch, ta, device: str, steps: int) -> None:
    """Sparse row gradients with duplicate ids (the sort and the row kernel), a dense param in
    the same optimizer."""
    for multi in (False, True):
        emb = torch.nn.Embedding(50, 1041, sparse=True).to(device)
        dense = torch.nn.Parameter(torch.randn(17, device=device))
        opt = ta.Adam(1e-2, parameters=[emb.weight, dense], lazy_mode=True, amsgrad=True,
                      per_tensor_launches=not multi)
        ids = torch.tensor([3, 9, 3, 41, 9, 9, 0, 49], device=device)
        before = [emb.weight.detach().clone(), dense.detach().clone()]
        for _ in range(steps):
            emb.weight.grad = None
            (emb(ids) * torch.randn(len(ids), 1041, device=device)).sum().backward()
            dense.grad = torch.randn_like(dense)
            opt.step()
        rows = sorted(set(ids.tolist()))
        _check_moved(torch, [emb.weight[rows], dense], [before[0][rows], before[1]])
        absent = [r for r in range(50) if r not in rows]
        if not bool(torch.equal(emb.weight.detach()[absent], before[0][absent])):
            raise AssertionError("lazy mode changed a row absent from the gradient")


def capturable_graph(torch, ta, device: str, steps: int) -> None:
    """A capturable AdamW step (amsgrad, global-norm clipping) captured in a CUDA graph after
    an eager warm-up on a side stream, replayed with a new learning rate each time (off CUDA:
    eager capturable steps)."""
    ps = _params(torch, device)
    sched = ta.lr.StepDecay(1e-2, step_size=1, gamma=0.9)
    opt = ta.AdamW(sched, parameters=ps, amsgrad=True, grad_clip=ta.ClipGradByGlobalNorm(0.5),
                   capturable=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in ps]
    if not str(device).startswith("cuda"):
        for _ in range(steps):
            opt.step()
            sched.step()
    else:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            opt.step()
            sched.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        for _ in range(steps):
            graph.replay()
            sched.step()
        torch.cuda.synchronize()
    _check_moved(torch, ps, before)


CASES: dict[str, Callable] = {
    "dense fp32 + L2Decay": dense,
    "multi-tensor fp32 AdamW (+ unaligned view)": multi_tensor,
    "amsgrad (per-tensor, multi-tensor)": amsgrad,
    "fp64 (per-tensor, multi-tensor amsgrad)": fp64,
    "bf16 + fp32 master weights": bf16_master,
    "bf16 remainder masters / stochastic rounding, bf16 moments": fewer_bytes,
    "AMP fp16: loss scale, then a skipped step": amp_skip,
    "clipping: global norm (norm pass + finalize), ClipGradByNorm": clipping,
    "lazy rows with duplicate ids": lazy_rows,
    "capturable step in a CUDA graph, replayed with a schedule": capturable_graph,
}


if __name__ == "__main__":
    sys.exit(main())
