"""Clipping and AMP with sparse gradients, in both sparse paths, through the optimizer.

Definition (Paddle's, for SelectedRows gradients): a row-sparse gradient enters clipping after
its duplicate rows are summed, so each present row counts once in a norm, and a value clip
clamps the summed row; AMP's loss scale comes off before clipping; AMP's overflow flag makes
the step change nothing. The lazy path (``lazy_mode=True``) applies all of it to the present
rows only; the densified path (``lazy_mode=False``) is the dense update of the densified
gradient, clipped and unscaled like any dense gradient. Checked against the float64 reference
(lazy), against a twin optimizer stepping the densified gradient (densified), and bitwise
between the update paths.
"""

from __future__ import annotations

import pytest
import torch

import triton_adam
from devices import DEVICE, fma_tol
from triton_adam import reference as ref
from triton_adam import reference_clip as refclip

MULTI = pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
N_ROWS, WIDTH = 9, 17
STEPS = 3
HYPER = dict(beta1=0.9, beta2=0.999, epsilon=1e-8)


def _problem(seed=0):
    """A sparse embedding-like table and a dense matrix, float64, with per-step gradients:
    sparse ones with duplicate and unsorted ids."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(N_ROWS, WIDTH, generator=gen, dtype=torch.float64)
    dense = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    steps = []
    for _ in range(STEPS):
        ids = torch.tensor([[7, 2, 7, 0, 2, 7]])
        values = torch.randn(ids.shape[1], WIDTH, generator=gen, dtype=torch.float64) * 2
        steps.append((ids, values, torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2))
    return table, dense, steps


def _run(clip, multi_tensor, lazy=True, amp=None):
    table, dense, steps = _problem()
    w = table.clone().to(DEVICE).requires_grad_()
    d = dense.clone().to(DEVICE).requires_grad_()
    opt = triton_adam.Adam(0.05, parameters=[w, d], grad_clip=clip, lazy_mode=lazy,
                           per_tensor_launches=not multi_tensor, **HYPER)
    for step, (ids, values, g) in enumerate(steps):
        scale = 1.0 if amp is None else amp[step]
        w.grad = torch.sparse_coo_tensor(ids, values * scale, (N_ROWS, WIDTH)).to(DEVICE)
        d.grad = (g * scale).to(DEVICE)
        kw = {} if amp is None else dict(grad_scale=torch.full((1,), scale, device=DEVICE))
        opt.step(**kw)
    return w, d, opt


def _reference(scale_of, value_clip=None):
    """The float64 reference: ``scale_of(merged sparse rows, dense grad)`` gives each tensor's
    clip scale; ``value_clip`` clamps the merged rows and the dense gradient."""
    table, dense, steps = _problem()
    rw = ref.init_state(table, beta1=0.9, beta2=0.999, amsgrad=False)
    rd = ref.init_state(dense, beta1=0.9, beta2=0.999, amsgrad=False)
    for ids, values, g in steps:
        rows, merged = ref.merge_sparse_rows(ids, values)
        if value_clip is not None:
            merged, g = merged.clamp(*value_clip), g.clamp(*value_clip)
        sw, sd = scale_of(merged, g)
        rw = ref.lazy_adam_step(rw, rows, merged * sw, lr=0.05, **HYPER)
        rd = ref.adam_step(rd, g * sd, lr=0.05, **HYPER)
    return rw, rd


def _assert_close(w, d, opt, rw, rd):
    tol = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(w.detach().cpu(), rw.param, **tol)
    torch.testing.assert_close(d.detach().cpu(), rd.param, **tol)
    state = opt.engine.state(0)
    torch.testing.assert_close(state["exp_avg"].cpu(), rw.moment1, **tol)
    torch.testing.assert_close(state["exp_avg_sq"].cpu(), rw.moment2, **tol)
    assert state["beta1_pow"].item() == pytest.approx(rw.beta1_pow, rel=1e-14)


@MULTI
@pytest.mark.parametrize("clip_norm", [0.5, 1e6], ids=["clipped", "under-the-norm"])
def test_lazy_global_norm_counts_each_row_once_after_summing(multi_tensor, clip_norm):
    w, d, opt = _run(triton_adam.ClipGradByGlobalNorm(clip_norm), multi_tensor)

    def scale_of(merged, g):
        norm = refclip.global_norm([merged, g])
        s = refclip.global_norm_scale(norm, clip_norm)
        return s, s

    _assert_close(w, d, opt, *_reference(scale_of))
    assert opt.engine.norms() is not None


@MULTI
def test_lazy_clip_by_norm_per_tensor(multi_tensor):
    w, d, opt = _run(triton_adam.ClipGradByNorm(0.7), multi_tensor)

    def scale_of(merged, g):
        return (refclip.by_norm_scale(refclip.sum_of_squares(merged).sqrt(), 0.7),
                refclip.by_norm_scale(refclip.sum_of_squares(g).sqrt(), 0.7))

    _assert_close(w, d, opt, *_reference(scale_of))


@MULTI
def test_lazy_clip_by_value_clamps_the_summed_rows(multi_tensor):
    w, d, opt = _run(triton_adam.ClipGradByValue(0.8), multi_tensor)
    _assert_close(w, d, opt, *_reference(lambda m, g: (1.0, 1.0), value_clip=(-0.8, 0.8)))


@MULTI
def test_lazy_amp_unscale_is_exact_and_bitwise_equal_to_unscaled(multi_tensor):
    """GradScaler's scales are powers of two: unscaling is exact, so a scaled run equals the
    unscaled one bit for bit, with global-norm clipping too."""
    clip = triton_adam.ClipGradByGlobalNorm(0.5)
    w1, d1, _ = _run(clip, multi_tensor, amp=[2.0 ** 10, 2.0 ** 4, 2.0 ** 12])
    w2, d2, _ = _run(triton_adam.ClipGradByGlobalNorm(0.5), multi_tensor)
    assert torch.equal(w1, w2) and torch.equal(d1, d2)


@MULTI
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "densified"])
def test_amp_overflow_with_a_sparse_gradient_changes_nothing(multi_tensor, lazy):
    table, dense, steps = _problem()
    w = table.clone().to(DEVICE).requires_grad_()
    d = dense.clone().to(DEVICE).requires_grad_()
    opt = triton_adam.Adam(0.05, parameters=[w, d], lazy_mode=lazy,
                           per_tensor_launches=not multi_tensor)
    ids, values, g = steps[0]
    w.grad = torch.sparse_coo_tensor(ids, values, (N_ROWS, WIDTH)).to(DEVICE)
    d.grad = g.to(DEVICE)
    opt.step()
    before = ([w.detach().clone(), d.detach().clone()],
              {k: v.clone() for k, v in opt.state_dict().items()})
    ids, values, g = steps[1]
    w.grad = torch.sparse_coo_tensor(ids, values * float("inf"), (N_ROWS, WIDTH)).to(DEVICE)
    d.grad = g.to(DEVICE)
    opt.step(grad_scale=torch.ones(1, device=DEVICE), found_inf=torch.ones(1, device=DEVICE))
    assert torch.equal(before[0][0], w.detach()) and torch.equal(before[0][1], d.detach())
    after = opt.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before[1].items())


@MULTI
def test_densified_sparse_gradient_is_clipped_as_its_dense_twin(multi_tensor):
    """lazy_mode=False: the densified gradient in a global norm with a dense one, bitwise
    equal to a twin that steps the densified gradient as a dense one."""
    table, dense, steps = _problem()
    a = [table.clone().to(DEVICE).requires_grad_(), dense.clone().to(DEVICE).requires_grad_()]
    b = [table.clone().to(DEVICE).requires_grad_(), dense.clone().to(DEVICE).requires_grad_()]
    oa = triton_adam.Adam(0.05, parameters=a, grad_clip=triton_adam.ClipGradByGlobalNorm(0.5),
                          per_tensor_launches=not multi_tensor)
    ob = triton_adam.Adam(0.05, parameters=b, grad_clip=triton_adam.ClipGradByGlobalNorm(0.5),
                          per_tensor_launches=not multi_tensor)
    for ids, values, g in steps:
        sparse = torch.sparse_coo_tensor(ids, values, (N_ROWS, WIDTH)).to(DEVICE)
        a[0].grad, a[1].grad = sparse, g.to(DEVICE)
        b[0].grad = sparse.to_dense()
        b[1].grad = g.to(DEVICE)
        oa.step()
        ob.step()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_lazy_clip_and_amp_paths_are_bitwise_equal():
    clip = triton_adam.ClipGradByGlobalNorm(0.5)
    runs = [_run(clip, m, amp=[2.0 ** 3] * STEPS) for m in (False, True)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
