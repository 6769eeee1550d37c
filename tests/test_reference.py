"""Every configuration of the table (``tests/configs.py``) against the float64 reference.

The specification (``triton_adam.reference``: one Adam/AdamW step, lazy sparse rows;
``triton_adam.reference_clip``: norms and clipped gradients) is given the hyper-parameters
each configuration claims for each parameter (``Config.reference``), the step's learning
rate (a scheduler's value for scheduled configurations) and the same gradients; both update
paths must follow it for ``STEPS`` steps on parameters of odd sizes (one over a block), with
gradients missing on some steps (a parameter's pows advance only when it has one).

Compared through the public state (``opt.engine.state(i)``): the parameter (for fp16/bf16
parameters, the fp32 master weight, and the parameter exactly the master rounded to its
dtype), both moments, ``max_exp_avg_sq`` with amsgrad (and only then) and the pows.
Tolerances: float64 1e-12 (only the algebraic form differs); float32 (and the fp32 masters)
rtol 1e-5, atol 2e-6 (a few ulps per step after 6 steps, as in test_clip_optimizer.py; the
derivation is in ``_tolerances``). In CUDA mode (``tests/devices.py``) at least
``devices.FMA_FLOOR``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs import CONFIGS
from devices import DEVICE, fma_tol
from triton_adam.kernels import adam as K
from triton_adam.reference import adam_step, init_state, lazy_adam_step

SHAPES = [(5, 3), (3,), (4, 2, 2), (7,), (K.BLOCK_SIZE + 3,)]
STEPS = 6
# (step, parameter) without a gradient: parameter 1 misses step 2, parameter 3 starts at 2.
NONE = frozenset({(2, 1), (0, 3), (1, 3)})
PATHS = pytest.mark.parametrize("multi_tensor", [False, True],
                                ids=["per-tensor", "multi-tensor"])


def _problem(config):
    """Initial values and per-step gradients (None where ``NONE`` says), from a seed of the
    configuration's name: both paths see the same problem."""
    rng = np.random.default_rng([sum(map(ord, config.name)), len(config.name)])
    init = [torch.from_numpy(rng.standard_normal(s)).to(config.dtype) for s in SHAPES]
    grads = [[None if (step, i) in NONE else config.grad(rng, p) for i, p in enumerate(init)]
             for step in range(STEPS)]
    return init, grads


def _tolerances(dtype):
    """(values, pows) tolerances: the state is float64 for float64 params, else float32."""
    if dtype == torch.float64:
        return fma_tol(dtype, rtol=1e-12, atol=1e-12), 1e-15
    # atol: params of magnitude up to 3 (half an ulp: 1.2e-7 per step) and updates of up to
    # 0.3 (groups-clip's second group steps at lr 0.1), a few float32 roundings each, for 6
    # steps. fp32 pows: beta rounded to fp32 (6e-8 relative) and one rounding per step.
    return fma_tol(torch.float32, rtol=1e-5, atol=2e-6), 1e-6


@PATHS
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_the_float64_reference(name, multi_tensor):
    config = CONFIGS[name]
    spec = config.reference
    init, grads = _problem(config)
    params = [t.to(DEVICE).requires_grad_() for t in init]
    config.set_attrs(params)
    opt, sched = config.start(params, per_tensor_launches=not multi_tensor)
    ref_sched = config.scheduler()
    hypers = [spec.hyper(i, p) for i, p in enumerate(init)]
    refs = [init_state(p, beta1=h["beta1"], beta2=h["beta2"], amsgrad=spec.amsgrad)
            for p, h in zip(init, hypers)]
    for step_grads in grads:
        lr = ref_sched() if ref_sched is not None else config.lr
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.to(DEVICE)
        opt.step()
        if sched is not None:
            sched.step()
            ref_sched.step()
        clipped = spec.clip(step_grads) if spec.clip is not None else step_grads
        for i, (g, c) in enumerate(zip(step_grads, clipped)):
            if g is None:
                continue
            if g.is_sparse:
                c = c.cpu().coalesce() if spec.clip is not None else g.cpu()
                refs[i] = lazy_adam_step(refs[i], c._indices()[0], c._values(), lr=lr,
                                         **hypers[i])
            else:
                refs[i] = adam_step(refs[i], c.cpu(), lr=lr, **hypers[i])
        opt.clear_grad(set_to_zero=False)

    tol, pow_rel = _tolerances(config.dtype)
    for i, (p, r) in enumerate(zip(params, refs)):
        state = opt.engine.state(i)
        expected = {"exp_avg", "exp_avg_sq", "beta1_pow", "beta2_pow", "step"}
        expected |= {"max_exp_avg_sq"} if spec.amsgrad else set()
        if config.dtype in (torch.float16, torch.bfloat16):
            expected.add("master")
            master = state["master"]
            # the parameter is exactly its master weight rounded to nearest
            assert torch.equal(p.detach(), master.to(config.dtype)), f"param {i}"
            torch.testing.assert_close(master.cpu().double(), r.param, **tol,
                                       msg=lambda m: f"master weight {i}: {m}")
        else:
            torch.testing.assert_close(p.detach().cpu().double(), r.param, **tol,
                                       msg=lambda m: f"param {i}: {m}")
        assert set(state) == expected, (i, sorted(state))
        # the steps this parameter was updated by (an empty sparse gradient is none)
        steps = sum(g is not None and (not g.is_sparse or g._nnz() > 0)
                    for g in (step_grads[i] for step_grads in grads))
        assert state["step"].item() == steps, (i, state["step"].item(), steps)
        for acc, ref in (("exp_avg", r.moment1), ("exp_avg_sq", r.moment2),
                         ("max_exp_avg_sq", r.moment2_max)):
            if acc in state:
                torch.testing.assert_close(state[acc].cpu().double(), ref, **tol,
                                           msg=lambda m: f"{acc} of param {i}: {m}")
        for acc, ref in (("beta1_pow", r.beta1_pow), ("beta2_pow", r.beta2_pow)):
            assert state[acc].item() == pytest.approx(ref, rel=pow_rel), (acc, i)
