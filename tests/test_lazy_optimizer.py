"""Sparse gradients in the optimizer: lazy_mode row updates, densified updates, and their rules.

Against the float64 reference (``reference.lazy_adam_step``: the spec's section-4 Decision,
Paddle's GPU semantics) with fp64 at 1e-12 and fp32 at 1e-5 relative (a few ulps per step).
Rows a sparse gradient does not touch must be bit-for-bit unchanged. In CUDA mode
(``tests/devices.py``) the tolerances are at least the FMA bound ``devices.FMA_FLOOR``.
"""

from __future__ import annotations

import pytest
import torch

import triton_adam
from devices import DEVICE, fma_tol, import_paddle, needs_paddle
from triton_adam.reference import adam_step, init_state, lazy_adam_step

paddle = import_paddle()
TOL = {torch.float64: fma_tol(torch.float64, rtol=1e-12, atol=1e-12),
       torch.float32: fma_tol(torch.float32, rtol=1e-5, atol=1e-6)}
MULTI = pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])


def _embedding_grad(emb: torch.nn.Embedding, ids: torch.Tensor, seed: int) -> None:
    """A real sparse COO gradient (unsorted, with duplicates) from Embedding(sparse=True)."""
    gen = torch.Generator().manual_seed(seed)
    out = emb(ids.to(DEVICE))
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype).to(DEVICE)).sum().backward()


def _ids(step: int, rows: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, rows, (7,), generator=gen)
    return torch.cat([ids, ids[:2]])  # duplicates


@MULTI
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_lazy_mode_updates_only_present_rows(dtype, multi_tensor):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(23, 17, sparse=True).to(dtype).to(DEVICE)
    dense = torch.nn.Parameter(torch.randn(5, dtype=dtype).to(DEVICE))  # a dense param beside it
    opt = triton_adam.Adam(0.05, parameters=[emb.weight, dense], lazy_mode=True, amsgrad=True,
                           per_tensor_launches=not multi_tensor)
    ref_e = init_state(emb.weight.cpu(), beta1=0.9, beta2=0.999, amsgrad=True)
    ref_d = init_state(dense.cpu(), beta1=0.9, beta2=0.999, amsgrad=True)
    hyper = dict(lr=0.05, beta1=0.9, beta2=0.999, epsilon=1e-8)
    for step in range(4):
        ids = _ids(step, 23)
        before = emb.weight.detach().clone()
        _embedding_grad(emb, ids, seed=step)
        g = emb.weight.grad
        assert g.is_sparse
        dense.grad = torch.randn(5, dtype=dtype).to(DEVICE)
        opt.step()
        ref_e = lazy_adam_step(ref_e, g._indices()[0].cpu(), g._values().cpu(), **hyper)
        ref_d = adam_step(ref_d, dense.grad.cpu(), **hyper)
        absent = torch.ones(23, dtype=torch.bool, device=DEVICE)
        absent[ids] = False
        assert torch.equal(emb.weight.detach()[absent], before[absent])
        opt.clear_grad(set_to_zero=False)
    state = opt.state_dict()
    torch.testing.assert_close(emb.weight.detach().cpu().double(), ref_e.param, **TOL[dtype])
    torch.testing.assert_close(dense.detach().cpu().double(), ref_d.param, **TOL[dtype])
    for acc, ref in (("moment1", ref_e.moment1), ("moment2", ref_e.moment2),
                     ("moment2_max", ref_e.moment2_max)):
        torch.testing.assert_close(state[f"param_0_{acc}_0"].cpu().double(), ref, **TOL[dtype])
    assert state["param_0_beta1_pow_acc_0"].item() == pytest.approx(ref_e.beta1_pow, rel=1e-6)


@MULTI
def test_lazy_mode_false_equals_the_dense_update_of_the_densified_gradient(multi_tensor):
    torch.manual_seed(1)
    emb = torch.nn.Embedding(11, 4, sparse=True).double().to(DEVICE)
    twin = torch.nn.Parameter(emb.weight.detach().clone())
    opt = triton_adam.Adam(0.05, parameters=[emb.weight], per_tensor_launches=not multi_tensor)
    opt_twin = triton_adam.Adam(0.05, parameters=[twin], per_tensor_launches=not multi_tensor)
    for step in range(3):
        _embedding_grad(emb, _ids(step, 11), seed=step)
        twin.grad = emb.weight.grad.to_dense()
        opt.step()
        opt_twin.step()
        opt.clear_grad(set_to_zero=False)
    assert torch.equal(emb.weight, twin)


def test_empty_sparse_gradient_changes_nothing():
    emb = torch.nn.Embedding(6, 3, sparse=True).to(DEVICE)
    opt = triton_adam.Adam(0.05, parameters=[emb.weight], lazy_mode=True)
    _embedding_grad(emb, torch.tensor([1, 2]), seed=0)
    opt.step()
    state = {k: v.clone() for k, v in opt.state_dict().items()}
    before = emb.weight.detach().clone()
    emb.weight.grad = torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.int64),
                                              torch.zeros(0, 3), (6, 3)).to(DEVICE)
    opt.step()
    assert torch.equal(emb.weight, before)
    for k, v in opt.state_dict().items():
        assert torch.equal(v, state[k]), k


@needs_paddle
def test_weight_decay_with_sparse_gradient_raises_as_paddle():
    pd = paddle.nn.Embedding(6, 3, sparse=True)
    popt = paddle.optimizer.Adam(0.05, parameters=pd.parameters(), weight_decay=0.01)
    pd(paddle.to_tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError) as theirs:
        popt.step()
    emb = torch.nn.Embedding(6, 3, sparse=True).to(DEVICE)
    opt = triton_adam.Adam(0.05, parameters=[emb.weight], weight_decay=0.01, lazy_mode=True)
    _embedding_grad(emb, torch.tensor([1, 2]), seed=0)
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="weight_decay with sparse") as ours:
        opt.step()
    assert str(ours.value) in str(theirs.value)  # Paddle's message, word for word
    assert torch.equal(emb.weight, before)


def test_lazy_mode_per_group_and_decay_in_group_mode():
    """Group mode: lazy_mode per group; a group's weight_decay applies to the present rows
    (Paddle raises only in a flat list)."""
    torch.manual_seed(2)
    a = torch.nn.Embedding(9, 5, sparse=True).double().to(DEVICE)
    b = torch.nn.Embedding(9, 5, sparse=True).double().to(DEVICE)
    opt = triton_adam.Adam(0.05, parameters=[
        {"params": [a.weight], "lazy_mode": True, "weight_decay": 0.1},
        {"params": [b.weight], "lazy_mode": False}])
    ra = init_state(a.weight.cpu(), beta1=0.9, beta2=0.999, amsgrad=False)
    rb = init_state(b.weight.cpu(), beta1=0.9, beta2=0.999, amsgrad=False)
    hyper = dict(lr=0.05, beta1=0.9, beta2=0.999, epsilon=1e-8)
    for step in range(3):
        ids = _ids(step, 9)
        _embedding_grad(a, ids, seed=step)
        _embedding_grad(b, ids, seed=step + 10)
        ga, gb = a.weight.grad, b.weight.grad
        opt.step()
        ra = lazy_adam_step(ra, ga._indices()[0].cpu(), ga._values().cpu(), l2=0.1, **hyper)
        rb = adam_step(rb, gb.to_dense().cpu(), **hyper)
        opt.clear_grad(set_to_zero=False)
    torch.testing.assert_close(a.weight.detach().cpu(), ra.param, **TOL[torch.float64])
    torch.testing.assert_close(b.weight.detach().cpu(), rb.param, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lazy_with_master_weights(dtype):
    torch.manual_seed(3)
    emb = torch.nn.Embedding(13, 17, sparse=True).to(dtype).to(DEVICE)
    opt = triton_adam.Adam(0.05, parameters=[emb.weight], lazy_mode=True,
                           multi_precision=True, use_multi_tensor=True)
    ref = init_state(emb.weight.cpu(), beta1=0.9, beta2=0.999, amsgrad=False)
    for step in range(3):
        _embedding_grad(emb, _ids(step, 13), seed=step)
        g = emb.weight.grad
        opt.step()
        ref = lazy_adam_step(ref, g._indices()[0].cpu(), g._values().cpu(), lr=0.05, beta1=0.9,
                             beta2=0.999, epsilon=1e-8)
        opt.clear_grad(set_to_zero=False)
    master = opt.engine.state(0)["master"]
    torch.testing.assert_close(master.cpu().double(), ref.param, **TOL[torch.float32])
    assert torch.equal(emb.weight.detach(), master.to(dtype))


def test_sparse_member_of_a_multi_tensor_bucket_matches_per_tensor():
    """One sparse embedding in a bucket of dense params: the row kernel updates it, the rest
    of the bucket one launch; bitwise equal to the per-tensor path, steps with and without
    dense gradients."""
    results = []
    for multi in (False, True):
        torch.manual_seed(4)
        emb = torch.nn.Embedding(10, 6, sparse=True).to(DEVICE)
        lin = torch.nn.Linear(6, 3).to(DEVICE)
        opt = triton_adam.Adam(0.05, parameters=[emb.weight, *lin.parameters()],
                               lazy_mode=True, per_tensor_launches=not multi)
        for step in range(4):
            ids = _ids(step, 10)
            if step == 2:  # only the embedding gets a gradient this step
                _embedding_grad(emb, ids, seed=step)
            else:
                lin(emb(ids.to(DEVICE))).square().sum().backward()
            opt.step()
            opt.clear_grad(set_to_zero=False)
        results.append([emb.weight.detach().clone(), *[p.detach().clone()
                                                       for p in lin.parameters()]]
                       + [v.clone() for _, v in sorted(opt.state_dict().items())])
    assert all(torch.equal(x, y) for x, y in zip(*results))
