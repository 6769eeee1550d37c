"""The built-in demo: one small model trained by triton_adam, the float64 reference and Paddle
(``--api paddle``, the default) or PyTorch (``--api torch``).

Every implementation starts from the same weights and sees gradients of the same loss on the
same synthetic data; only the optimizer differs. The table at the end shows each one's final
loss and its largest parameter difference from the float64 reference.

``--api paddle`` trains with ``triton_adam.Adam`` / ``AdamW`` (Paddle's API) and compares with
Paddle when it is installed; ``--api torch`` trains with ``triton_adam.optim.Adam`` / ``AdamW``
(``torch.optim``'s API) and compares with ``torch.optim.Adam`` / ``AdamW``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from tqdm import tqdm

from triton_adam import optim, reference
from triton_adam.optimizer import Adam, AdamW

HIDDEN = 16
FEATURES = 8
SAMPLES = 256


def synthetic_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth regression target: y = sin(x @ w) + 0.1 * noise, float64."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=gen, dtype=torch.float64)
    w = torch.randn(FEATURES, 1, generator=gen, dtype=torch.float64)
    y = torch.sin(x @ w) + 0.1 * torch.randn(SAMPLES, 1, generator=gen, dtype=torch.float64)
    return x, y


def initial_weights(seed: int) -> list[torch.Tensor]:
    """A two-layer MLP (FEATURES -> HIDDEN -> 1, tanh), float64."""
    gen = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(FEATURES, HIDDEN, generator=gen, dtype=torch.float64) / FEATURES ** 0.5,
            torch.zeros(HIDDEN, dtype=torch.float64),
            torch.randn(HIDDEN, 1, generator=gen, dtype=torch.float64) / HIDDEN ** 0.5,
            torch.zeros(1, dtype=torch.float64)]


def loss_and_grads(weights: list[torch.Tensor], x: torch.Tensor,
                   y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """Mean squared error of the MLP and its gradients (computed on detached copies)."""
    w = [t.detach().clone().requires_grad_() for t in weights]
    pred = torch.tanh(x.to(w[0].dtype) @ w[0] + w[1]) @ w[2] + w[3]
    loss = ((pred - y.to(pred.dtype)) ** 2).mean()
    loss.backward()
    return float(loss.detach()), [t.grad for t in w]


class _Runner:
    """One implementation: its own weights, and a function that applies one step."""

    def __init__(self, name: str, weights: list[torch.Tensor],
                 apply: Callable[[list[torch.Tensor]], None],
                 read: Callable[[], list[torch.Tensor]]) -> None:
        self.name, self.apply, self.read = name, apply, read
        self.weights = weights


def _triton_runner(args, init, device) -> _Runner:
    dtype = getattr(torch, args.dtype)
    params = [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_() for t in init]
    launch = dict(per_tensor_launches=args.per_tensor_launches, capturable=args.capturable)
    opt = (AdamW(args.lr, parameters=params, weight_decay=args.weight_decay,
                 amsgrad=args.amsgrad, **launch)
           if args.optimizer == "adamw"
           else Adam(args.lr, parameters=params, amsgrad=args.amsgrad, **launch))
    return _optimizer_runner(f"triton_adam ({args.dtype}, {device.type})", params, opt,
                             device, dtype)


def _optimizer_runner(name: str, params: list[torch.Tensor], opt,
                      device: torch.device, dtype: torch.dtype) -> _Runner:
    """A runner that sets the gradients and steps ``opt`` (either face)."""

    def apply(grads):
        for p, g in zip(params, grads):
            p.grad = g.to(device=device, dtype=dtype)
        opt.step()

    return _Runner(name, params, apply, lambda: [p.detach().cpu().double() for p in params])


def _torch_face_runner(args, init, device) -> _Runner:
    """``triton_adam.optim.Adam`` / ``AdamW``: the same kernels behind ``torch.optim``'s API."""
    dtype = getattr(torch, args.dtype)
    params = [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_() for t in init]
    cls = optim.AdamW if args.optimizer == "adamw" else optim.Adam
    wd = args.weight_decay if args.optimizer == "adamw" else 0.0
    opt = cls(params, lr=args.lr, weight_decay=wd, amsgrad=args.amsgrad,
              capturable=args.capturable)
    return _optimizer_runner(f"triton_adam.optim ({args.dtype}, {device.type})", params, opt,
                             device, dtype)


def _reference_runner(args, init) -> _Runner:
    """The float64 reference. With constant hyper-parameters Paddle's step and torch's are
    one formula: ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps * sqrt(1 - b2^t))``
    (Paddle) is ``lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (torch), and both
    decay AdamW's parameter by ``lr * wd * p`` first. The difference: Paddle keeps AdamW's
    coefficient in float32, torch the Python float."""
    states = [reference.init_state(t, beta1=0.9, beta2=0.999, amsgrad=args.amsgrad)
              for t in init]
    wd = args.weight_decay
    if args.api == "paddle":
        wd = float(torch.tensor(wd, dtype=torch.float32))  # Paddle's float32 coeff

    def apply(grads):
        for i, g in enumerate(grads):
            states[i] = reference.adam_step(
                states[i], g, lr=args.lr, beta1=0.9, beta2=0.999, epsilon=1e-8,
                weight_decay=wd if args.optimizer == "adamw" else 0.0)

    return _Runner("reference (float64)", None, apply, lambda: [s.param for s in states])


def _paddle_runner(args, init) -> _Runner | None:
    try:
        with warnings.catch_warnings():  # Paddle warns about ccache when imported
            warnings.simplefilter("ignore")
            import paddle
    except ImportError:
        return None
    paddle.set_device("cpu")
    params = [paddle.create_parameter(list(t.shape), dtype=args.dtype,
                                      default_initializer=paddle.nn.initializer.Assign(
                                          t.numpy().astype(args.dtype))) for t in init]
    cls = paddle.optimizer.AdamW if args.optimizer == "adamw" else paddle.optimizer.Adam
    extra = dict(weight_decay=args.weight_decay) if args.optimizer == "adamw" else {}
    opt = cls(args.lr, parameters=params, amsgrad=args.amsgrad, **extra)

    def apply(grads):
        # d/dp sum(p * g) = g: hands Paddle exactly the gradient the others get.
        loss = sum((p * paddle.to_tensor(g.numpy().astype(args.dtype))).sum()
                   for p, g in zip(params, grads))
        loss.backward()
        opt.step()
        opt.clear_grad()

    return _Runner(f"paddle {paddle.__version__} ({args.dtype}, cpu)", None, apply,
                   lambda: [torch.from_numpy(p.numpy()).double() for p in params])


def _torch_runner(args, init) -> _Runner:
    """``torch.optim.Adam`` / ``AdamW`` (``foreach=False``: the single-tensor loop) on the
    CPU."""
    params = [t.detach().to(dtype=getattr(torch, args.dtype), copy=True).requires_grad_()
              for t in init]
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    wd = args.weight_decay if args.optimizer == "adamw" else 0.0
    opt = cls(params, lr=args.lr, weight_decay=wd, amsgrad=args.amsgrad, foreach=False)

    def apply(grads):
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        opt.step()

    return _Runner(f"torch.optim.{cls.__name__} {torch.__version__} ({args.dtype}, cpu)", None,
                   apply, lambda: [p.detach().double() for p in params])


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Train every implementation; returns one result row per implementation."""
    x, y = synthetic_data(args.seed)
    init = initial_weights(args.seed)
    if args.api == "torch":
        if args.per_tensor_launches:
            raise SystemExit("error: --per-tensor-launches is an option of the Paddle API "
                             "(triton_adam.Adam); triton_adam.optim always launches one kernel "
                             "per bucket")
        runners = [_torch_face_runner(args, init, device), _reference_runner(args, init),
                   _torch_runner(args, init)]
    else:
        runners = [_triton_runner(args, init, device), _reference_runner(args, init)]
    if args.api == "paddle" and not args.no_paddle:
        paddle_runner = _paddle_runner(args, init)
        if paddle_runner is not None:
            runners.append(paddle_runner)
    seconds = {r.name: 0.0 for r in runners}
    initial_loss, _ = loss_and_grads(init, x, y)
    for _ in tqdm(range(args.steps), desc="training", unit="step"):
        for r in runners:
            _, grads = loss_and_grads(r.read(), x, y)
            start = time.perf_counter()
            r.apply(grads)
            seconds[r.name] += time.perf_counter() - start
    ref_weights = runners[1].read()
    rows = []
    for r in runners:
        weights = r.read()
        loss, _ = loss_and_grads(weights, x, y)
        diff = max(float((a - b).abs().max()) for a, b in zip(weights, ref_weights))
        rows.append(dict(implementation=r.name, initial_loss=initial_loss, final_loss=loss,
                         max_param_diff=diff, optimizer_seconds=seconds[r.name]))
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["implementation", "initial loss", "final loss", "max |param - reference|",
              "optimizer time (s)"]
    body = [[r["implementation"], f"{r['initial_loss']:.6f}", f"{r['final_loss']:.6f}",
             f"{r['max_param_diff']:.3e}", f"{r['optimizer_seconds']:.2f}"] for r in rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m triton_adam",
        description="Train a small built-in MLP on synthetic data with triton_adam, the "
                    "float64 reference and (when installed) Paddle, or with --api torch "
                    "PyTorch's torch.optim, and compare them.")
    parser.add_argument("--api", choices=["paddle", "torch"], default="paddle",
                        help="paddle: triton_adam.Adam/AdamW against Paddle (default); torch: "
                             "triton_adam.optim.Adam/AdamW against torch.optim.Adam/AdamW")
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    parser.add_argument("--optimizer", choices=["adam", "adamw"], default="adam")
    parser.add_argument("--weight-decay", type=float, default=0.01,
                        help="AdamW's decay coefficient (default 0.01)")
    parser.add_argument("--amsgrad", action="store_true")
    parser.add_argument("--per-tensor-launches", action="store_true",
                        help="one kernel launch per parameter instead of one per step "
                             "(same results; --api paddle only)")
    parser.add_argument("--capturable", action="store_true",
                        help="capturable steps: the learning rate read from the device "
                             "(same results)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else the CPU under the interpreter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-paddle", action="store_true", help="skip Paddle even if installed")
    return parser
