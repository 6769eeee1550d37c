"""A step is all-or-nothing, and the optimizer notices what was done to its parameters.

Each failing case compares parameters, master weights, moments and pows before and after the
failed call (``_snapshot``), and a property-based test throws random bad input at ``step()``:
it either works or raises a clear error with nothing changed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triton_adam
from devices import DEVICE
from triton_adam.kernels import adam as K

MULTI = pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
SHAPES = [(K.BLOCK_SIZE + 3,), (17,), (5, 7)]


def _params(dtype=torch.float32, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).to(DEVICE).requires_grad_() for s in shapes]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        g_dtype = p.grad.dtype if p.grad is not None else p.dtype
        p.grad = torch.randn(p.shape, generator=gen).to(g_dtype).to(DEVICE)


def _snapshot(opt, params):
    """Everything a step may change: params and the whole state (masters included)."""
    state = {}
    for k, v in opt.state_dict().items():
        if isinstance(v, torch.Tensor):
            state[k] = v.detach().clone()
        elif isinstance(v, dict):
            state[k] = {n: t.detach().clone() for n, t in v.items()
                        if isinstance(t, torch.Tensor)}
    return [p.detach().clone() for p in params], state


def _assert_unchanged(before, after):
    for i, (x, y) in enumerate(zip(before[0], after[0])):
        assert x.shape == y.shape and torch.equal(x, y), f"param {i} changed"
    assert before[1].keys() == after[1].keys()
    for k, v in before[1].items():
        if isinstance(v, dict):
            for n in v:
                assert torch.equal(v[n], after[1][k][n]), f"{k}[{n}] changed"
        else:
            assert torch.equal(v, after[1][k]), f"{k} changed"


# --------------------------------------------- 1. a parameter's size or storage changes
@MULTI
@pytest.mark.parametrize("change", ["shrink", "grow", "reshape", "dtype"])
def test_param_replaced_by_another_layout_is_refused_then_works_once_restored(multi_tensor,
                                                                            change):
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=[("a", params[0]), ("b", params[1]),
                                             ("c", params[2])], per_tensor_launches=not multi_tensor)
    _grads(params, 0)
    opt.step()
    original = params[1].data
    new = {"shrink": lambda d: d[:5].clone(), "grow": lambda d: torch.cat([d, d]),
           "reshape": lambda d: d[:16].clone().view(4, 4),
           "dtype": lambda d: d.double()}[change](original)
    params[1].data = new
    params[1].grad = torch.ones_like(new)  # a gradient that matches the new param
    for p in (params[0], params[2]):
        p.grad = torch.ones_like(p)
    before = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"parameter 'b' changed since the optimizer first "
                                         r"saw it.*nothing was updated"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, params))  # state_dict() still works, too
    params[1].data = original
    params[1].grad = torch.ones_like(original)
    opt.step()  # restored: it steps again
    assert not torch.equal(before[0][0], params[0].detach())


@MULTI
def test_param_storage_replaced_with_the_same_layout_is_followed(multi_tensor):
    """``p.data = t`` with the same shape and dtype (a module re-initialised in place of its
    tensors): the step updates the new storage, exactly as a fresh copy would be."""
    a, b = _params(), _params()
    oa = triton_adam.Adam(0.01, parameters=a, per_tensor_launches=not multi_tensor)
    ob = triton_adam.Adam(0.01, parameters=b, per_tensor_launches=not multi_tensor)
    for step in range(3):
        _grads(a, step)
        _grads(b, step)
        if step == 1:
            a[0].data = a[0].data.clone()  # a new storage, same values
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ------------------------------------------------------------------ 2. all-or-nothing
@MULTI
@pytest.mark.parametrize("bad", ["grad shape", "grad dtype", "param dtype", "sparse ids",
                                 "sparse 2-d", "found_inf shape", "grad_scale shape"])
def test_an_error_in_any_bucket_changes_no_bucket(multi_tensor, bad):
    """Three buckets (fp32, fp64, a sparse embedding): the error is in the last one looked at,
    and is raised before the first launch."""
    p32 = _params(torch.float32, shapes=[(17,), (3, 4)])
    p64 = _params(torch.float64, shapes=[(9,)], seed=1)
    emb = torch.nn.Embedding(6, 3, sparse=True).to(DEVICE)
    params = p32 + p64 + [emb.weight]
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=not multi_tensor,
                           lazy_mode=True)

    def grads():
        _grads(p32 + p64, 1)
        emb.weight.grad = None
        emb(torch.tensor([[0, 4, 4]], device=DEVICE)).sum().backward()

    grads()
    opt.step()
    grads()
    kwargs = {}
    # torch checks a gradient's shape, dtype and device when it is assigned, not when its
    # data is replaced: how a mismatched gradient reaches an optimizer.
    if bad == "grad shape":
        p64[0].grad.data = torch.ones(8, dtype=torch.float64, device=DEVICE)
    elif bad == "grad dtype":
        p64[0].grad.data = torch.ones(9, dtype=torch.float32, device=DEVICE)
    elif bad == "param dtype":
        p64[0].data = p64[0].data.float()
    elif bad == "sparse ids":
        if DEVICE.type != "cpu":
            pytest.skip("ids on a GPU are not checked on the host (that would be a sync)")
        emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[2, 6]]), torch.ones(2, 3),
                                                  (6, 3))
    elif bad == "sparse 2-d":
        emb.weight.grad = emb.weight.grad.to_dense().to_sparse(2)
    elif bad == "found_inf shape":
        kwargs = dict(found_inf=torch.zeros(3, device=DEVICE))
    elif bad == "grad_scale shape":
        kwargs = dict(grad_scale=torch.ones(2, device=DEVICE))
    before = _snapshot(opt, params)
    with pytest.raises((ValueError, TypeError, NotImplementedError, IndexError)) as info:
        opt.step(**kwargs)
    assert str(info.value)
    _assert_unchanged(before, _snapshot(opt, params))


@MULTI
def test_non_contiguous_sparse_values_just_work(multi_tensor):
    """Sparse values that are a non-contiguous view give the same step as contiguous ones."""
    def run(contiguous):
        w = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        w.requires_grad_()
        opt = triton_adam.Adam(0.01, parameters=[w], lazy_mode=True,
                               per_tensor_launches=not multi_tensor)
        values = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        values = values.t() if not contiguous else values.t().contiguous()
        assert values.is_contiguous() is contiguous
        w.grad = torch.sparse_coo_tensor(torch.tensor([[1, 5, 1]], device=DEVICE), values,
                                         (7, 4))
        opt.step()
        return w.detach()

    assert torch.equal(run(False), run(True))


# -------------------------------------------- 4. master weights and writes from outside
def _master_opt(multi_tensor, dtype=torch.bfloat16):
    params = _params(dtype)
    opt = triton_adam.Adam(0.01, parameters=params, multi_precision=True,
                           per_tensor_launches=not multi_tensor)
    return params, opt


def _masters(opt):
    return {k: v.detach().clone() for k, v in opt.state_dict()["master_weights"].items()}


@MULTI
@pytest.mark.parametrize("write", ["copy_", "data", "module load_state_dict"])
def test_a_param_written_from_outside_is_the_next_steps_starting_point(multi_tensor, write):
    """bf16 params with fp32 master weights: after ``p.copy_``, ``p.data = ...`` or a module's
    ``load_state_dict``, the next step starts from the written value (its master is re-read
    from the param), exactly like an optimizer whose master was made from that value."""
    params, opt = _master_opt(multi_tensor)
    _grads(params, 0)
    opt.step()
    new = torch.randn(params[1].shape, generator=torch.Generator().manual_seed(9)).to(
        torch.bfloat16).to(DEVICE)
    if write == "copy_":
        with torch.no_grad():
            params[1].copy_(new)
    elif write == "data":
        params[1].data = new.clone()
    else:
        holder = torch.nn.Module()
        holder.w = torch.nn.Parameter(params[1])  # the same tensor, seen as a module's
        holder.load_state_dict({"w": new})
    assert torch.equal(params[1].detach(), new)
    # Twin: a fresh optimizer's state with its master set to the written value.
    twin_params = [p.detach().clone().requires_grad_() for p in params]
    twin = triton_adam.Adam(0.01, parameters=twin_params, multi_precision=True,
                            per_tensor_launches=not multi_tensor)
    state = opt.state_dict()
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else
                 {n: t.clone() for n, t in v.items()}) for k, v in state.items()}
    state["master_weights"]["param_1"] = new.float().clone()
    twin.set_state_dict(state)
    _grads(params, 1)
    _grads(twin_params, 1)
    opt.step()
    twin.step()
    for x, y in zip(params, twin_params):
        assert torch.equal(x, y)
    assert all(torch.equal(_masters(opt)[n], _masters(twin)[n]) for n in _masters(opt))


@MULTI
def test_loaded_master_weights_win_over_a_model_loaded_just_before(multi_tensor):
    """The usual resume order, model weights then optimizer state: the loaded fp32 masters
    (more precise than the bf16 params) are what the next step starts from."""
    params, opt = _master_opt(multi_tensor)
    _grads(params, 0)
    opt.step()
    saved = {k: (v.clone() if isinstance(v, torch.Tensor) else
                 {n: t.clone() for n, t in v.items()}) for k, v in opt.state_dict().items()}
    saved_params = [p.detach().clone() for p in params]
    _grads(params, 1)
    opt.step()  # moves on; then resume from the checkpoint
    with torch.no_grad():
        for p, s in zip(params, saved_params):
            p.copy_(s)
    opt.set_state_dict(saved)
    assert all(torch.equal(_masters(opt)[n], saved["master_weights"][n]) for n in _masters(opt))
    _grads(params, 2)
    opt.step()
    # A run that never stopped from the checkpoint
    ref_params = [s.clone().requires_grad_() for s in saved_params]
    ref = triton_adam.Adam(0.01, parameters=ref_params, multi_precision=True,
                           per_tensor_launches=not multi_tensor)
    ref.set_state_dict(saved)
    _grads(ref_params, 2)
    ref.step()
    for x, y in zip(params, ref_params):
        assert torch.equal(x, y)


# ------------------------------------------------------------------- 5. autograd safety
@MULTI
@pytest.mark.parametrize("master", [False, True])
def test_backward_through_a_graph_that_saved_a_param_before_the_step_raises(multi_tensor,
                                                                            master):
    dtype = torch.bfloat16 if master else torch.float32
    params = _params(dtype)
    opt = triton_adam.Adam(0.01, parameters=params, multi_precision=master,
                           per_tensor_launches=not multi_tensor)
    x = torch.randn(params[1].shape, dtype=dtype, device=DEVICE, requires_grad=True)
    loss = (params[1] * x).sum()  # saves params[1] for x's gradient
    _grads(params, 0)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # The optimizer's own version bump is not mistaken for an outside write (item 4).
    before = _snapshot(opt, params)
    _grads(params, 1)
    opt.step()
    if master:
        p_master = _masters(opt)["param_1"]
        assert not torch.equal(p_master, before[0][1].float())  # not re-read from the param


@MULTI
def test_state_tensors_of_state_dict_see_the_kernels_writes(multi_tensor):
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=not multi_tensor)
    _grads(params, 0)
    opt.step()
    m = opt.state_dict()["param_0_moment1_0"]
    version = m._version
    _grads(params, 1)
    opt.step()
    assert m._version > version


# ---------------------------------------------------------------- 7. param_groups writes
def test_param_groups_writes_are_refused_not_ignored():
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=params)
    groups = opt.param_groups
    assert groups[0]["params"] == params or all(a is b for a, b in zip(groups[0]["params"],
                                                                       params))
    for write in (lambda g: g.__setitem__("lr", 0.1), lambda g: g.update(lr=0.1),
                  lambda g: g.setdefault("weight_decay", 0.1), lambda g: g.pop("params"),
                  lambda g: g.__delitem__("params")):
        with pytest.raises(TypeError, match="read-only.*set_lr"):
            write(opt.param_groups[0])
    assert opt.get_lr() == 0.01


# --------------------------------------------------------------- 10. sparse ids out of range
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "densified"])
@pytest.mark.parametrize("ids", [[1, 6], [-1, 2]], ids=["past-the-end", "negative"])
def test_sparse_ids_out_of_range_raise_on_the_host(lazy, ids):
    if DEVICE.type != "cpu":
        pytest.skip("on a GPU the ids stay on the device and out-of-range rows are skipped")
    w = torch.randn(6, 3).requires_grad_()
    opt = triton_adam.Adam(0.01, parameters=[w], lazy_mode=lazy)
    w.grad = torch.sparse_coo_tensor(torch.tensor([ids]), torch.ones(2, 3), (6, 3))
    before = _snapshot(opt, [w])
    with pytest.raises(IndexError, match=r"row ids must be in \[0, 6\)"):
        opt.step()
    _assert_unchanged(before, _snapshot(opt, [w]))


# ------------------------------------------------------------ property: random bad input
def _bad_grad(draw, p):
    kind = draw(st.sampled_from(["ok", "shape", "dtype", "meta", "int", "none", "sparse-csr",
                                 "nan", "noncontiguous", "scalar", "complex"]))
    if kind == "ok":
        return torch.randn(p.shape, dtype=p.dtype, device=DEVICE)
    if kind == "shape":
        return torch.randn(p.numel() + draw(st.integers(1, 3)), dtype=p.dtype, device=DEVICE)
    if kind == "dtype":
        return torch.randn(p.shape, dtype=draw(st.sampled_from(
            [torch.float16, torch.float64, torch.bfloat16])), device=DEVICE)
    if kind == "meta":
        return torch.empty(p.shape, dtype=p.dtype, device="meta")
    if kind == "int":
        return torch.ones(p.shape, dtype=torch.int32, device=DEVICE)
    if kind == "none":
        return None
    if kind == "sparse-csr":
        return torch.randn(p.shape, dtype=p.dtype).reshape(p.shape[0], -1).to_sparse_csr()
    if kind == "nan":
        return torch.full(p.shape, float("nan"), dtype=p.dtype, device=DEVICE)
    if kind == "noncontiguous":
        return torch.randn(tuple(reversed(p.shape)), dtype=p.dtype, device=DEVICE).t() \
            if p.dim() == 2 else torch.randn(p.numel() * 2, dtype=p.dtype)[::2]
    if kind == "scalar":
        return torch.randn((), dtype=p.dtype, device=DEVICE)
    return torch.randn(p.shape, dtype=torch.complex64, device=DEVICE)


ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError, IndexError)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_bad_input_to_step_works_or_changes_nothing(data):
    multi_tensor = data.draw(st.booleans())
    master = data.draw(st.booleans())
    dtype = torch.bfloat16 if master else torch.float32
    shapes = [(5, 3), (17,), (2, 2)]
    params = _params(dtype, shapes=shapes)
    opt = triton_adam.AdamW(0.01, parameters=params, multi_precision=master,
                            per_tensor_launches=not multi_tensor, amsgrad=data.draw(st.booleans()),
                            grad_clip=data.draw(st.sampled_from(
                                [None, triton_adam.ClipGradByGlobalNorm(1.0),
                                 triton_adam.ClipGradByValue(0.5)])))
    _grads(params, 0)
    opt.step()
    for p in params:
        bad = _bad_grad(data.draw, p)
        try:
            p.grad = bad
        except RuntimeError:  # torch refuses it at assignment; its data can still be set
            try:
                p.grad.data = bad
            except RuntimeError:
                pass
    kwargs = {}
    amp = data.draw(st.sampled_from(["none", "ok", "meta", "shape", "float"]))
    if amp == "ok":
        kwargs = dict(grad_scale=torch.full((1,), 2.0, device=DEVICE),
                      found_inf=torch.zeros(1, device=DEVICE))
    elif amp == "meta":
        kwargs = dict(grad_scale=torch.ones(1, device="meta"))
    elif amp == "shape":
        kwargs = dict(found_inf=torch.zeros(3, device=DEVICE))
    elif amp == "float":
        kwargs = dict(grad_scale=2.0)
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(params) - 1))
        params[i].data = data.draw(st.sampled_from([
            lambda t: t.clone(), lambda t: t.flatten()[:1].clone(), lambda t: t.float(),
            lambda t: torch.cat([t.flatten(), t.flatten()])]))(params[i].data)
    before = _snapshot(opt, params)
    try:
        opt.step(**kwargs)
    except ERRORS as error:
        assert str(error), type(error)
        _assert_unchanged(before, _snapshot(opt, params))
