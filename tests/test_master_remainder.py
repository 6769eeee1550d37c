"""Does ``master_weight_format="remainder"`` keep the fp32-master mode's numbers exactly?

bf16 parameters keep their fp32 master as the parameter (the master's high half, rounded to
nearest with ties away from zero) plus an int16 remainder (``kernels/common.py``). Checked
here: the split and its inverse over every high half and the edge-case low halves (host and
kernel, bit for bit the same); long runs bitwise equal to the fp32-master mode on every path
(bucketed, per-tensor launches, lazy sparse rows, clipping, AMP skips, amsgrad, AdamW,
fp32 gradients, a parameter written from outside); state dicts crossing both ways between
the two formats (Paddle's keys, the torch face's ``'master'``) and continuing bitwise; the
refusals (bad values, fp16 parameters, no master weights).
"""

from __future__ import annotations

import pytest
import torch

import triton_adam
from triton_adam.kernels import adam as K
from triton_adam.kernels.common import join_master_host, split_master_host

LOWS = (0x0000, 0x0001, 0x3FFF, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF)


def _edge_masters() -> torch.Tensor:
    """Every high half (sign, exponent, bf16 mantissa: zeros, subnormals, binade edges, the
    largest finite values, infinities, NaNs) with low halves around the tie and the ends."""
    hi = torch.arange(0, 1 << 16, dtype=torch.int64)
    bits = ((hi[:, None] << 16) | torch.tensor(LOWS)[None, :]).reshape(-1)
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
    return bits.view(torch.float32)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16}[t.dtype])


def test_split_rebuilds_every_master_and_rounds_to_nearest():
    w = _edge_masters()
    param, rem = split_master_host(w)
    back = join_master_host(param, rem)
    nan = torch.isnan(w)
    assert torch.equal(_bits(back)[~nan], _bits(w)[~nan])  # exact, ±0, subnormals, ±inf
    assert torch.isnan(back[nan]).all() and torch.isnan(param[nan].float()).all()
    # The param is the nearest bf16 value; it differs from round-to-nearest-even only on an
    # exact tie whose high half is even (ties away from zero there).
    w_bits = _bits(w).to(torch.int64) & 0xFFFFFFFF
    even_tie = ((w_bits & 0xFFFF) == 0x8000) & (((w_bits >> 16) & 1) == 0) & ~nan
    differs = (_bits(param) != _bits(w.to(torch.bfloat16))) & ~nan
    assert torch.equal(differs, even_tie)
    away = (_bits(param[even_tie]).to(torch.int64) & 0x7FFF) \
        - (_bits(w[even_tie].to(torch.bfloat16)).to(torch.int64) & 0x7FFF)
    assert (away == 1).all()  # one ulp larger in magnitude (also into inf: 0x7F7F8000 is odd)


def test_kernel_split_matches_host():
    """The kernels rebuild, update (here by nothing: lr 0, gradient 0) and split the master
    with the same bits as the host functions the state dict uses."""
    w = _edge_masters()
    param, rem = split_master_host(w)
    n = w.numel()
    m, v = torch.zeros(n), torch.zeros(n)
    hyper = torch.zeros(K.HYPER_WIDTH)
    hyper[[K.HYPER_LR_SCALE, K.HYPER_BETA1, K.HYPER_BETA2, K.HYPER_EPS]] = torch.tensor(
        [1.0, 0.9, 0.999, 1e-8])
    pows_in = torch.tensor([0.9, 0.999, 0.0, 0.0])
    pows_out = torch.zeros(4)
    K.adam_update_(param, torch.zeros(n, dtype=torch.bfloat16), m, v, None, hyper, pows_in,
                   pows_out, lr=0.0, coupled_decay=False, decoupled_decay=False, master=rem)
    nan = torch.isnan(w)
    expect_param, expect_rem = split_master_host(join_master_host(*split_master_host(w)))
    assert torch.equal(_bits(param)[~nan], _bits(expect_param)[~nan])
    assert torch.equal(rem[~nan], expect_rem[~nan])
    assert torch.equal(_bits(join_master_host(param, rem))[~nan], _bits(w)[~nan])
    assert torch.isnan(param[nan].float()).all()


# ------------------------------------------------------------------------- long runs, bitwise
SHAPES = ((33, 7), (1030,), (5,))  # a partial block, a full block and a part, a tiny tensor
# 200 steps on the plain path, fewer on the others (the interpreter runs ~1 us per element).
STEPS = {"bucketed": 200}
OTHER_STEPS = 40


def _params(seed: int = 0, sparse_rows: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(torch.bfloat16))
              for s in SHAPES]
    if sparse_rows:
        params.append(torch.nn.Parameter(torch.randn(sparse_rows, 8, generator=g)
                                         .to(torch.bfloat16)))
    return params


def _grads(params, step: int, fp32_first: bool, sparse: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    out = []
    for i, p in enumerate(params):
        if sparse and i == len(params) - 1:
            rows = torch.randint(0, p.shape[0], (6,), generator=g)  # duplicates included
            values = torch.randn(6, p.shape[1], generator=g).to(torch.bfloat16)
            out.append(torch.sparse_coo_tensor(rows[None], values, p.shape))
            continue
        grad = torch.randn(p.shape, generator=g) * (1 + step % 7)
        if fp32_first and i == 0:
            p.grad_dtype = torch.float32  # torch >= 2.13: allow fp32 gradients on bf16
        out.append(grad if (fp32_first and i == 0) else grad.to(torch.bfloat16))
    return out


def _run(fmt: str, steps: int, *, cls=triton_adam.Adam, params=None, opt_kwargs=None,
         fp32_first: bool = False, sparse: bool = False, amp: bool = False,
         write_at: int | None = None, start: int = 0, state=None):
    params = params if params is not None else _params(sparse_rows=12 if sparse else 0)
    opt = cls(learning_rate=1e-2, parameters=params, multi_precision=True,
              master_weight_format=fmt, **(opt_kwargs or {}))
    if state is not None:
        opt.set_state_dict(state)
    for step in range(start, start + steps):
        for p, grad in zip(params, _grads(params, step, fp32_first, sparse)):
            p.grad = grad
        if write_at == step:
            with torch.no_grad():
                params[1].mul_(0.5)  # written from outside: the master follows the param
        if amp:
            found_inf = torch.tensor([1.0 if step % 9 == 4 else 0.0])
            opt.step(grad_scale=torch.tensor([8.0]), found_inf=found_inf)
        else:
            opt.step()
    return opt, params


def _assert_same(fp32, remainder):
    (opt_a, params_a), (opt_b, params_b) = fp32, remainder
    for i in range(len(params_a)):
        sa, sb = opt_a._engine.state(i), opt_b._engine.state(i)
        assert sorted(sa) == sorted(sb)
        for name in sa:
            assert torch.equal(_bits(sa[name]) if sa[name].dtype == torch.float32
                               else sa[name], _bits(sb[name]) if sb[name].dtype == torch.float32
                               else sb[name]), (i, name)
        # The params: the same master, rounded ties-to-even in one, ties-away in the other.
        assert torch.equal(_bits(params_a[i]), _bits(sa["master"].to(torch.bfloat16)))
        assert torch.equal(_bits(params_b[i]), _bits(split_master_host(sb["master"])[0]))


PATHS = {
    "bucketed": dict(),
    "per-tensor": dict(opt_kwargs=dict(per_tensor_launches=True)),
    "amsgrad-adamw-clip": dict(cls=triton_adam.AdamW, opt_kwargs=dict(
        amsgrad=True, weight_decay=0.1, grad_clip=triton_adam.ClipGradByGlobalNorm(1.0))),
    "value-clip-l2-fp32-grad": dict(fp32_first=True, opt_kwargs=dict(
        weight_decay=0.01, grad_clip=triton_adam.ClipGradByValue(0.5))),
    "lazy-sparse-amp": dict(sparse=True, amp=True, opt_kwargs=dict(lazy_mode=True)),
    "written-from-outside": dict(write_at=17),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_long_run_bitwise_equal_to_fp32_master(path):
    kw, steps = PATHS[path], STEPS.get(path, OTHER_STEPS)
    _assert_same(_run("fp32", steps, **kw), _run("remainder", steps, **kw))


# --------------------------------------------------------------------------- state dicts
def test_state_dict_crosses_formats_and_continues_bitwise():
    """fp32 -> remainder -> fp32 through Paddle's state dict (the same keys, float32 masters),
    continuing bitwise like one fp32-master run of all the steps."""
    kw = dict(cls=triton_adam.AdamW, opt_kwargs=dict(amsgrad=True))
    reference = _run("fp32", 30, **kw)
    first = _run("fp32", 10, **kw)
    sd = first[0].state_dict()
    # A fresh model: the load writes the params (the masters' high halves).
    second = _run("remainder", 10, params=_params(seed=7), start=10, state=sd, **kw)
    sd2 = second[0].state_dict()
    assert sorted(sd2) == sorted(sd) and set(sd2["master_weights"]) == set(sd["master_weights"])
    assert all(v.dtype == torch.float32 for v in sd2["master_weights"].values())
    third = _run("fp32", 10, params=[p.detach().clone().requires_grad_() for p in second[1]],
                 start=20, state=sd2, **kw)
    for i in range(len(SHAPES)):
        ref, got = reference[0]._engine.state(i), third[0]._engine.state(i)
        for name in ref:
            if name != "step":  # not in Paddle's format: a load restarts the count
                assert torch.equal(ref[name], got[name]), name
        assert torch.equal(_bits(reference[1][i]), _bits(third[1][i]))
    # And the remainder run itself matched the reference at its end (step 20): its masters.
    middle = _run("fp32", 20, **kw)
    for i in range(len(SHAPES)):
        assert torch.equal(_bits(middle[0]._engine.state(i)["master"]),
                           _bits(second[0]._engine.state(i)["master"]))


def test_rebuilt_master_is_a_copy():
    opt, params = _run("remainder", 3)
    master = opt._engine.state(0)["master"]
    before = master.clone()
    master.add_(1.0)  # writing into it changes nothing
    assert torch.equal(opt._engine.state(0)["master"], before)
    assert opt.state_dict()["master_weights"]["param_0"] is not master


def test_torch_face_state_dict_crosses_formats():
    """remainder -> fp32 -> remainder through the torch face's state dict ('master' float32),
    continuing bitwise like one fp32-master run."""
    def run(fmt, steps, start, params, sd=None):
        opt = triton_adam.optim.AdamW(params, lr=1e-2, master_weights=True,
                                      master_weight_format=fmt)
        if sd is not None:
            opt.load_state_dict(sd)
        for step in range(start, start + steps):
            for p, grad in zip(params, _grads(params, step, False, False)):
                p.grad = grad
            opt.step()
        return opt

    ref_params = _params()
    ref = run("fp32", 18, 0, ref_params)
    a_params = _params()
    a = run("remainder", 6, 0, a_params)
    assert a.master_weight_format == "remainder"
    sd = a.state_dict()
    assert sd["state"][0]["master"].dtype == torch.float32
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = run("fp32", 6, 6, b_params, sd)  # fp32 masters from the remainder ones
    c_params = _params(seed=3)
    c = run("remainder", 6, 12, c_params, b.state_dict())  # back; the load writes the params
    for p_ref, p_c in zip(ref_params, c_params):
        want, got = ref.state[p_ref], c.state[p_c]
        for name in ("step", "exp_avg", "exp_avg_sq", "master"):
            assert torch.equal(want[name], got[name]), name
        assert torch.equal(_bits(p_c), _bits(split_master_host(want["master"])[0]))


# ------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad", ["bf16", "FP32", 16, None, True])
def test_bad_format_values(bad):
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="master_weight_format"):
        triton_adam.Adam(parameters=[p], multi_precision=True, master_weight_format=bad)
    with pytest.raises(ValueError, match="master_weight_format"):
        triton_adam.optim.Adam([p], master_weights=True, master_weight_format=bad)


def test_remainder_needs_master_weights_and_bf16():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="multi_precision=True"):
        triton_adam.AdamW(parameters=[p], master_weight_format="remainder")
    with pytest.raises(ValueError, match="master_weights=True"):
        triton_adam.optim.AdamW([p], master_weight_format="remainder")
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(TypeError, match="float16"):
        triton_adam.Adam(parameters=[p, half], multi_precision=True,
                         master_weight_format="remainder")
    with pytest.raises(TypeError, match="float16"):
        triton_adam.optim.Adam([half], master_weights=True, master_weight_format="remainder")
    # fp32 parameters beside bf16 ones simply have no master.
    full = torch.nn.Parameter(torch.zeros(3))
    opt = triton_adam.Adam(parameters=[p, full], multi_precision=True,
                           master_weight_format="remainder")
    p.grad, full.grad = torch.ones(3, dtype=torch.bfloat16), torch.ones(3)
    opt.step()
    assert "master" in opt._engine.state(0) and "master" not in opt._engine.state(1)


def test_remainder_bucket_keeps_no_fp32_master():
    opt, _ = _run("remainder", 1)
    (bucket,) = opt._engine.buckets
    assert bucket.master is None and bucket.remainder.dtype == torch.int16
    assert bucket.remainder.numel() == bucket.moment1.numel()
