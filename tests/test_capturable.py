"""Capturable steps (``capturable=True``): what a CUDA graph needs of ``step()``, and the
errors when a captured step would need more.

A CUDA graph replays the launches recorded at capture with the arguments of capture, and no
Python runs at replay. So a capturable step must pass the same arguments at every step (the
same addresses, no per-step Python scalar: the learning rate is read from the device), make
no allocation and no host sync, and refuse before any launch whatever would need host work
during capture. The CPU has no graphs: here the capture query is patched (``backend.capturing``)
and every kernel launch is recorded with its arguments; in CUDA mode the last test captures
a real graph and replays it.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import triton_adam
from counters import DeviceOps, TritonLaunches, triton_kernels  # perf/counters.py
from devices import CUDA_MODE, DEVICE, cpu_only
from host_syncs import count_host_syncs
from triton_adam import backend
from triton_adam.kernels import adam as K

SIZES = [(K.BLOCK_SIZE + 1,), (17,), (3, 5), (1,)]
# bf16 parameters without master weights (stochastic rounding) warn at their first step.
pytestmark = pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).to(DEVICE).requires_grad_() for s in SIZES]


def _grads_into(params, seed):
    """Fresh random gradients written into the existing ``.grad`` tensors (as backward
    accumulates into kept gradients): the same gradient objects at every step."""
    gen = torch.Generator().manual_seed(1000 + seed)
    for p in params:
        g = torch.randn(p.shape, generator=gen).to(p.dtype).to(DEVICE)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


# name -> (param dtype, optimizer builder(params, lr, **kw), uses AMP tensors)
MODES = {
    "adam": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(lr, parameters=ps, **kw)),
    "adam per-tensor launches": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, per_tensor_launches=True, **kw)),
    "adamw amsgrad": (torch.float32, lambda ps, lr, **kw: triton_adam.AdamW(
        lr, parameters=ps, amsgrad=True, weight_decay=0.1, **kw)),
    "adam L1Decay": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, weight_decay=triton_adam.L1Decay(1e-2), **kw)),
    "adam L2Decay, per-tensor launches": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, weight_decay=triton_adam.L2Decay(1e-2), per_tensor_launches=True,
        **kw)),
    "float64 amsgrad": (torch.float64, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, amsgrad=True, **kw)),
    "bf16 master weights": (torch.bfloat16, lambda ps, lr, **kw: triton_adam.AdamW(
        lr, parameters=ps, multi_precision=True, **kw)),
    "global-norm clip": (torch.float32, lambda ps, lr, **kw: triton_adam.AdamW(
        lr, parameters=ps, grad_clip=triton_adam.ClipGradByGlobalNorm(0.5), **kw)),
    "clip by norm, per-tensor launches": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, grad_clip=triton_adam.ClipGradByNorm(0.3), per_tensor_launches=True,
        **kw)),
    "clip by value": (torch.float32, lambda ps, lr, **kw: triton_adam.Adam(
        lr, parameters=ps, grad_clip=triton_adam.ClipGradByValue(0.5), **kw)),
    "bf16 master, global-norm clip, amsgrad": (torch.bfloat16, lambda ps, lr, **kw:
                                               triton_adam.AdamW(
        lr, parameters=ps, multi_precision=True, amsgrad=True,
        grad_clip=triton_adam.ClipGradByGlobalNorm(0.5), **kw)),
    # issue 19's low-precision modes (tests/test_low_precision_modes.py): the random stream of
    # bf16 moments and stochastic rounding is keyed by the step count the kernels read on the
    # device, so a replayed step draws the bits of its own step.
    "bf16 remainder masters, bf16 moments, amsgrad": (torch.bfloat16, lambda ps, lr, **kw:
                                                      triton_adam.AdamW(
        lr, parameters=ps, multi_precision=True, master_weight_format="remainder",
        moment_dtype=torch.bfloat16, amsgrad=True, **kw)),
    "bf16 remainder masters, global-norm clip, per-tensor launches": (
        torch.bfloat16, lambda ps, lr, **kw: triton_adam.Adam(
            lr, parameters=ps, multi_precision=True, master_weight_format="remainder",
            grad_clip=triton_adam.ClipGradByGlobalNorm(0.5), per_tensor_launches=True, **kw)),
    "bf16 fp32 masters, bf16 moments, clip by norm": (torch.bfloat16, lambda ps, lr, **kw:
                                                      triton_adam.AdamW(
        lr, parameters=ps, multi_precision=True, moment_dtype=torch.bfloat16,
        grad_clip=triton_adam.ClipGradByNorm(0.3), **kw)),
    "float32, bf16 moments, amsgrad, per-tensor launches": (torch.float32, lambda ps, lr, **kw:
                                                            triton_adam.Adam(
        lr, parameters=ps, moment_dtype=torch.bfloat16, amsgrad=True, per_tensor_launches=True,
        **kw)),
    "bf16 stochastic rounding, clip by value": (torch.bfloat16, lambda ps, lr, **kw:
                                                triton_adam.AdamW(
        lr, parameters=ps, stochastic_rounding=True, seed=5,
        grad_clip=triton_adam.ClipGradByValue(0.5), **kw)),
    "bf16 stochastic rounding, bf16 moments, amsgrad, per-tensor launches": (
        torch.bfloat16, lambda ps, lr, **kw: triton_adam.Adam(
            lr, parameters=ps, stochastic_rounding=True, moment_dtype=torch.bfloat16,
            amsgrad=True, seed=7, per_tensor_launches=True, **kw)),
}
AMP = pytest.mark.parametrize("amp", [False, True], ids=["", "amp"])


def _amp_tensors(amp):
    if not amp:
        return None, None
    return (torch.full((1,), 8.0, device=DEVICE), torch.zeros(1, device=DEVICE))


def _set_amp(found_inf, step):
    """The device flag GradScaler would set: the third step overflows (skipped on the device)."""
    if found_inf is not None:
        found_inf.fill_(1.0 if step == 2 else 0.0)


def _scheduler():
    # A new learning rate at every step.
    return triton_adam.lr.CosineAnnealingDecay(0.02, T_max=5, eta_min=1e-3)


# ---------------------------------------------------------------------- instruments
def _normalized(value):
    """A launch argument as comparable data: a tensor by its address, dtype and shape."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.data_ptr(), value.dtype, tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return tuple(_normalized(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _normalized(v)) for k, v in value.items()))
    return value if isinstance(value, (int, float, bool, str, type(None))) else repr(value)


class LaunchRecorder:
    """Every launch of a ``triton_adam.kernels`` kernel as ``(kernel, args, kwargs)`` (grid
    included), the launch itself skipped."""

    def __init__(self):
        self.calls = []
        self._kernels = triton_kernels()

    def __enter__(self):
        for kernel in self._kernels:
            name = getattr(kernel, "__name__", None) or kernel.fn.__name__

            def run(*args, _name=name, **kwargs):
                self.calls.append((_name, _normalized(args), _normalized(kwargs)))

            kernel.run = run
        return self

    def __exit__(self, *exc):
        for kernel in self._kernels:
            del kernel.run


class Allocations(TorchDispatchMode):
    """The aten operations whose result lives in a new allocation (none of its inputs'
    storages): views and in-place or ``out=`` operations are not allocations."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.ops.append(str(func))
        return out


@pytest.fixture
def capture(monkeypatch):
    """``capture.on`` makes the library see a CUDA graph being captured."""
    class Capture:
        on = False
    state = Capture()
    monkeypatch.setattr(backend, "capturing", lambda devices: state.on)
    return state


def _step(opt, grad_scale, found_inf):
    opt.step(grad_scale=grad_scale, found_inf=found_inf)


# --------------------------------------------------------------- 1. the same launches
@cpu_only("records launches with the kernels stubbed and patches the capture query")
@AMP
@pytest.mark.parametrize("mode", list(MODES))
def test_captured_steps_launch_the_same_arguments_allocate_nothing_never_sync(
        monkeypatch, capture, mode, amp):
    """After an eager warm-up step, every captured step launches the same kernels with the
    same arguments (addresses and scalars) while the schedule changes the learning rate at
    every step, allocates nothing and makes no host sync; the new rate reaches the device
    tensor the kernels read at each scheduler.step(), outside the capture."""
    dtype, build = MODES[mode]
    params = _params(dtype)
    sched = _scheduler()
    opt = build(params, sched, capturable=True)
    grad_scale, found_inf = _amp_tensors(amp)
    _grads_into(params, 0)
    with TritonLaunches(execute=False):
        _step(opt, grad_scale, found_inf)  # warm-up: state, tables, norm buffers
    lr_tensor = opt.engine.lr_tensors[DEVICE]
    seen, rates = [], []
    for step in range(1, 5):
        sched.step()  # outside the capture: writes the device learning rate
        rates.append(sched())
        assert lr_tensor.item() == sched()  # (a sync of the test's own, outside the step)
        _grads_into(params, step)
        _set_amp(found_inf, step)
        syncs = []
        with monkeypatch.context() as patch, LaunchRecorder() as launches, \
                Allocations() as allocations:
            count_host_syncs(patch, syncs)
            capture.on = True
            _step(opt, grad_scale, found_inf)
            capture.on = False
        assert allocations.ops == [], allocations.ops
        assert syncs == [], syncs
        assert launches.calls, "no launch recorded"
        seen.append(launches.calls)
    assert len(set(rates)) == len(rates)  # the rate did change at every step
    assert all(calls == seen[0] for calls in seen[1:])
    # No Python float among the update's arguments but the unused lr slot (0.0): the rate
    # comes from the device.
    update = [c for c in seen[0] if c[0] in ("_adam_kernel", "_adam_tensor_list_kernel")]
    assert update and all(("tensor", lr_tensor.data_ptr(), torch.float64, (1,)) in args
                          and 0.0 in args for _, args, _ in update)


@cpu_only("counts the aten operations of clear_grad on CPU tensors")
@pytest.mark.parametrize("n", [10, 1000])
def test_clear_grad_zeroes_any_number_of_gradients_with_one_operation_per_dtype(n):
    params = [torch.randn(3, device=DEVICE, requires_grad=True) for _ in range(n)]
    params += [torch.randn(2, device=DEVICE, dtype=torch.float64, requires_grad=True)
               for _ in range(n)]
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad for p in params]
    opt = triton_adam.Adam(0.01, parameters=params)
    with DeviceOps() as ops:
        opt.clear_grad()
    assert dict(ops.ops) == {"_foreach_zero_": 2}  # float32 and float64: one each
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads))
    with DeviceOps() as ops:
        opt.zero_grad(set_to_none=False)
    assert ops.launches == 2
    opt.clear_grad(set_to_zero=False)
    assert all(p.grad is None for p in params)


# ------------------------------------------------- 2. the same results as eager steps
@cpu_only("patches the capture query (CUDA mode captures a real graph below)")
@AMP
@pytest.mark.parametrize("mode", list(MODES))
def test_capturable_steps_are_bitwise_equal_to_plain_ones(capture, mode, amp):
    """Eager and (simulated) captured steps of a capturable optimizer give the results of a
    plain one bit for bit: params, moments, master weights and pows, with a scheduler and,
    with AMP, a skipped step."""
    dtype, build = MODES[mode]
    runs = []
    for capturable in (False, True):
        params = _params(dtype)
        sched = _scheduler()
        opt = build(params, sched, capturable=capturable)
        grad_scale, found_inf = _amp_tensors(amp)
        for step in range(5):
            _grads_into(params, step)
            _set_amp(found_inf, step)
            capture.on = capturable and step >= 2  # two eager steps, then "captured" ones
            _step(opt, grad_scale, found_inf)
            capture.on = False
            sched.step()
        runs.append(([p.detach().clone() for p in params], opt.state_dict()))
    (pa, sa), (pb, sb) = runs
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype, options", [
    (torch.float32, {}),
    # the random stream of bf16 moments / stochastic rounding goes on from the loaded step
    (torch.bfloat16, dict(stochastic_rounding=True, moment_dtype=torch.bfloat16, seed=3)),
    (torch.bfloat16, dict(multi_precision=True, master_weight_format="remainder",
                          moment_dtype=torch.bfloat16)),
], ids=["float32", "bf16 stochastic rounding, bf16 moments", "bf16 remainder, bf16 moments"])
def test_capturable_state_dict_round_trips_into_a_plain_optimizer(dtype, options):
    """The state format is unchanged: a capturable optimizer's state continues in a plain
    one bit for bit, and the other way round."""
    def run(first, second):
        params = _params(dtype)
        a = triton_adam.Adam(0.01, parameters=params, amsgrad=True, capturable=first,
                             **options)
        for step in range(2):
            _grads_into(params, step)
            a.step()
        b = triton_adam.Adam(0.01, parameters=params, amsgrad=True, capturable=second,
                             **options)
        b.set_state_dict(a.state_dict())
        for step in range(2, 4):
            _grads_into(params, step)
            b.step()
        return [p.detach().clone() for p in params], b.state_dict()

    def tensors(state):  # the masters (master_weights) beside the accumulators
        out = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        out.update({("master", k): v for k, v in state.get("master_weights", {}).items()})
        return out

    reference = run(False, False)
    for first, second in ((True, False), (False, True), (True, True)):
        params, state = run(first, second)
        assert all(torch.equal(x, y) for x, y in zip(params, reference[0]))
        got, want = tensors(state), tensors(reference[1])
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), (first, second)


# ---------------------------------------------------------------- 3. clear errors
def _snapshot(opt, params):
    state = {k: v.clone() for k, v in opt.state_dict().items() if isinstance(v, torch.Tensor)}
    return [p.detach().clone() for p in params], state


def _assert_unchanged(before, after):
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def _warm(mode="adam", **kw):
    dtype, build = MODES[mode]
    params = _params(dtype)
    sched = _scheduler()
    opt = build(params, sched, capturable=True, **kw)
    _grads_into(params, 0)
    opt.step()
    return params, sched, opt


@pytest.mark.parametrize("change, match", [
    ("new gradient", "other than at the last step"),
    ("gradient dropped", "set of parameters with a gradient"),
    ("parameter storage", "other than at the last step"),
    ("written from outside", "written outside the optimizer"),
    ("option", "options of some parameters changed"),
    ("first step", "first step"),
])
def test_a_captured_step_that_needs_host_work_raises_and_changes_nothing(capture, change,
                                                                        match):
    params, sched, opt = _warm("bf16 master, global-norm clip, amsgrad")
    if change == "first step":
        params, sched = _params(), _scheduler()
        opt = triton_adam.Adam(sched, parameters=params, capturable=True)
        _grads_into(params, 1)
        before = _snapshot(opt, params)
    else:
        _grads_into(params, 1)
        before = _snapshot(opt, params)
        if change == "new gradient":
            params[1].grad = params[1].grad.clone()
        elif change == "gradient dropped":
            params[2].grad = None
        elif change == "parameter storage":
            params[0].data = params[0].data.clone()
        elif change == "written from outside":
            with torch.no_grad():
                params[3].add_(0)  # bumps the version counter: the master is reloaded
        elif change == "option":
            params[1].optimize_attr = {"learning_rate": 0.5}
    capture.on = True
    with pytest.raises(RuntimeError, match=match):
        opt.step()
    capture.on = False
    _assert_unchanged(before, _snapshot(opt, params))
    opt.step()  # eagerly the same step works, and the next capture can follow it


def test_a_captured_sparse_step_raises(capture):
    emb = torch.nn.Embedding(9, 4, sparse=True).to(DEVICE)
    opt = triton_adam.Adam(0.01, parameters=[emb.weight], lazy_mode=True, capturable=True)
    emb(torch.tensor([[1, 3, 3]], device=DEVICE)).sum().backward()
    opt.step()  # eagerly, sparse gradients work
    before = emb.weight.detach().clone()
    capture.on = True
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(before, emb.weight.detach())


def test_the_learning_rate_cannot_change_during_capture(capture):
    params, sched, opt = _warm()
    capture.on = True
    with pytest.raises(RuntimeError, match="outside the captured region"):
        sched.step()  # the scheduler writes the device rate: not while capturing
    with pytest.raises(RuntimeError, match="being captured"):
        opt.step()  # the scheduler moved on: the device holds the previous rate
    capture.on = False
    plain = triton_adam.Adam(0.01, parameters=_params(), capturable=True)
    plain.set_lr(0.02)
    assert plain.engine.lr_tensors[DEVICE].item() == 0.02
    capture.on = True
    with pytest.raises(RuntimeError, match="outside the captured region"):
        plain.set_lr(0.03)
    capture.on = False
    assert plain.engine.lr_tensors[DEVICE].item() == 0.02


def test_a_scheduler_set_later_or_replaced_drives_the_device_rate():
    params, sched, opt = _warm()
    lr = opt.engine.lr_tensors[DEVICE]
    new = triton_adam.lr.StepDecay(0.5, step_size=1, gamma=0.1)
    opt.set_lr_scheduler(new)
    assert lr.item() == 0.5
    sched.step()  # the old scheduler no longer drives this optimizer
    assert lr.item() == 0.5
    new.step()
    assert lr.item() == pytest.approx(0.05, rel=1e-15) and lr.item() == new()
    new.set_state_dict({"last_epoch": 0, "last_lr": 0.25})
    assert lr.item() == 0.25


def test_a_plain_optimizer_refuses_capture(capture):
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=params)
    _grads_into(params, 0)
    opt.step()
    capture.on = True
    with pytest.raises(RuntimeError, match="capturable=True"):
        opt.step()


# ---------------------------------------------------------- 4. a real graph (CUDA mode)
@pytest.mark.skipif(not CUDA_MODE, reason="captures a CUDA graph: CUDA test mode only")
@AMP
@pytest.mark.parametrize("mode", list(MODES))
def test_a_captured_step_replayed_matches_eager_steps(mode, amp):
    """Capture one step (backward included) with torch.cuda.graph, replay it N times with a
    schedule that changes the learning rate every step, and compare with N eager steps of a
    plain optimizer on the same data: the same kernels with the same arguments, so bitwise."""
    dtype, build = MODES[mode]
    n = 6
    xs = [torch.randn(7, device=DEVICE) for _ in range(n + 3)]

    def loss_fn(params, x):
        return sum((p.float().reshape(-1)[:7] * x[: p.numel()]).square().sum()
                   for p in params)

    # eager reference
    ref = _params(dtype)
    sched_ref = _scheduler()
    opt_ref = build(ref, sched_ref)
    grad_scale, found_inf = _amp_tensors(amp)
    for i in range(n + 3):
        for p in ref:
            p.grad = None
        loss_fn(ref, xs[i]).backward()
        _set_amp(found_inf, i)
        _step(opt_ref, grad_scale, found_inf)
        sched_ref.step()

    params = _params(dtype)
    sched = _scheduler()
    opt = build(params, sched, capturable=True)
    gs, fi = _amp_tensors(amp)
    static_x = torch.empty(7, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):  # eager warm-up steps (state, tables), as torch's recipe does
            opt.clear_grad()
            static_x.copy_(xs[i])
            loss_fn(params, static_x).backward()
            _set_amp(fi, i)
            _step(opt, gs, fi)
            sched.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.clear_grad()  # keeps the gradient tensors: backward accumulates into them
    with torch.cuda.graph(graph):
        opt.clear_grad()
        loss_fn(params, static_x).backward()
        _step(opt, gs, fi)
    for i in range(3, n + 3):
        static_x.copy_(xs[i])
        _set_amp(fi, i)
        graph.replay()
        sched.step()  # outside the graph: the next replay reads the new rate
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(params, ref))
    sa, sb = opt.state_dict(), opt_ref.state_dict()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key


@cpu_only("records launches with the kernels stubbed and patches the capture query")
def test_options_changed_between_replays_reach_the_captured_launch(capture):
    """A parameter option changed outside the graph (an eager step applies it) is written
    into the rows a captured launch reads: the launch arguments stay the same. New gradient
    tensors get a new launch table, and the old one stays alive for a graph still using it."""
    params, sched, opt = _warm()
    bucket = opt.engine.buckets[0]
    hyper = bucket.hyper
    old_table = bucket._device_table
    with LaunchRecorder() as first:
        capture.on = True
        opt.step()
        capture.on = False
    params[1].optimize_attr = {"learning_rate": 0.25}
    opt.step()  # eager: reconfigures params[1]
    assert bucket.hyper is hyper and hyper[1, K.HYPER_LR_SCALE].item() == 0.25
    with LaunchRecorder() as second:
        capture.on = True
        opt.step()
        capture.on = False
    assert first.calls == second.calls
    params[0].grad = params[0].grad.clone()
    opt.step()  # eager: a new table for the new gradient
    assert bucket._device_table is not old_table and old_table in bucket._retired
