"""The built-in demo: one small model trained by triton_adam, the float64 reference and Paddle
(``--api paddle``, the default) or PyTorch (``--api torch``).

Every implementation starts from the same weights and sees gradients of the same loss on the
same synthetic data; only the optimizer differs. The table at the end shows each one's final
loss and its largest parameter difference from the float64 reference.

``--api paddle`` trains with ``triton_adam.Adam`` / ``AdamW`` (Paddle's API) and compares with
Paddle when it is installed; ``--api torch`` trains with ``triton_adam.optim.Adam`` / ``AdamW``
(``torch.optim``'s API) and compares with ``torch.optim.Adam`` / ``AdamW``.

``--dtype bfloat16`` trains bf16 parameters (the initial weights rounded to bf16, for every
implementation) with master weights as ``--master-weights`` says (``fp32``, ``remainder`` or
``none``), moments as ``--moment-dtype`` says, and with ``--stochastic-rounding`` (no master
weights) parameters rounded stochastically. A mode other than fp32 masters with float32 moments
also trains triton_adam in that mode over the same data and gradients, and the table ends with
the gap between the two final losses. Paddle's CPU Adam has no bfloat16 kernel: no Paddle row.
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


def low_precision_mode(args: argparse.Namespace) -> tuple[str | None, str, bool]:
    """(master weights, moment dtype, stochastic rounding) of the run: master weights
    ``"fp32"``, ``"remainder"`` or ``"none"`` for bfloat16 parameters, None for the others
    (their own masters); ``--stochastic-rounding`` alone means no master weights (it rounds
    the parameters that have none)."""
    master = None
    if args.dtype == "bfloat16":
        master = args.master_weights or ("none" if args.stochastic_rounding else "fp32")
    return master, args.moment_dtype, args.stochastic_rounding


def _mode_label(args: argparse.Namespace, master: str | None, moment_dtype: str,
                stochastic: bool, device: torch.device) -> str:
    parts = [args.dtype]
    if master is not None:
        parts.append({"fp32": "fp32 masters", "remainder": "remainder masters",
                      "none": "no masters"}[master])
    if moment_dtype == "bfloat16":
        parts.append("bf16 moments")
    if master == "none":
        parts.append("stochastic rounding" if stochastic else "round to nearest")
    return ", ".join(parts + [device.type])


def _mode_options(api: str, master: str | None, moment_dtype: str, stochastic: bool,
                  seed: int) -> dict:
    """The optimizer's keywords of a mode (none for the defaults: float32/float64 parameters
    with float32 moments build the optimizer exactly as before these options existed)."""
    opts: dict = {}
    if master in ("fp32", "remainder"):
        opts["multi_precision" if api == "paddle" else "master_weights"] = True
        if master == "remainder":
            opts["master_weight_format"] = "remainder"
    if moment_dtype == "bfloat16":
        opts["moment_dtype"] = torch.bfloat16
    if stochastic:
        opts["stochastic_rounding"] = True
    if moment_dtype == "bfloat16" or stochastic:
        opts["seed"] = seed  # the key of the stochastic roundings' random bits
    return opts


def _triton_runner(args, init, device, mode=None) -> _Runner:
    """``triton_adam.Adam`` / ``AdamW`` in ``mode`` (default: the one the flags ask for)."""
    master, moment_dtype, stochastic = mode or low_precision_mode(args)
    dtype = getattr(torch, args.dtype)
    params = [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_() for t in init]
    launch = dict(per_tensor_launches=args.per_tensor_launches, capturable=args.capturable,
                  **_mode_options("paddle", master, moment_dtype, stochastic, args.seed))
    opt = (AdamW(args.lr, parameters=params, weight_decay=args.weight_decay,
                 amsgrad=args.amsgrad, **launch)
           if args.optimizer == "adamw"
           else Adam(args.lr, parameters=params, amsgrad=args.amsgrad, **launch))
    return _optimizer_runner(
        f"triton_adam ({_mode_label(args, master, moment_dtype, stochastic, device)})",
        params, opt, device, dtype)


def _optimizer_runner(name: str, params: list[torch.Tensor], opt,
                      device: torch.device, dtype: torch.dtype) -> _Runner:
    """A runner that sets the gradients and steps ``opt`` (either face)."""

    def apply(grads):
        for p, g in zip(params, grads):
            p.grad = g.to(device=device, dtype=dtype)
        opt.step()

    return _Runner(name, params, apply, lambda: [p.detach().cpu().double() for p in params])


def _torch_face_runner(args, init, device, mode=None) -> _Runner:
    """``triton_adam.optim.Adam`` / ``AdamW``: the same kernels behind ``torch.optim``'s API."""
    master, moment_dtype, stochastic = mode or low_precision_mode(args)
    dtype = getattr(torch, args.dtype)
    params = [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_() for t in init]
    cls = optim.AdamW if args.optimizer == "adamw" else optim.Adam
    wd = args.weight_decay if args.optimizer == "adamw" else 0.0
    opt = cls(params, lr=args.lr, weight_decay=wd, amsgrad=args.amsgrad,
              capturable=args.capturable,
              **_mode_options("torch", master, moment_dtype, stochastic, args.seed))
    return _optimizer_runner(
        f"triton_adam.optim ({_mode_label(args, master, moment_dtype, stochastic, device)})",
        params, opt, device, dtype)


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
    """Train every implementation; returns one result row per implementation. In a bfloat16
    mode other than fp32 masters with float32 moments, triton_adam's row carries
    ``fp32_master_loss``: the final loss of the same face trained with fp32 masters (its own
    row follows)."""
    x, y = synthetic_data(args.seed)
    init = initial_weights(args.seed)
    mode = low_precision_mode(args)
    baseline_mode = ("fp32", "float32", False)
    if args.dtype == "bfloat16":
        # Every implementation starts from the same bf16 weights (the float64 reference too).
        init = [t.to(torch.bfloat16).double() for t in init]
    if args.api == "torch":
        if args.per_tensor_launches:
            raise SystemExit("error: --per-tensor-launches is an option of the Paddle API "
                             "(triton_adam.Adam); triton_adam.optim always launches one kernel "
                             "per bucket")
        face = _torch_face_runner
    else:
        face = _triton_runner
    runners = [face(args, init, device)]
    baseline = None
    if args.dtype == "bfloat16" and mode != baseline_mode:
        baseline = face(args, init, device, baseline_mode)
        runners.append(baseline)
    reference = _reference_runner(args, init)
    runners.append(reference)
    if args.api == "torch":
        runners.append(_torch_runner(args, init))
    if args.api == "paddle" and not args.no_paddle:
        if args.dtype == "bfloat16":
            print("No Paddle row: Paddle's CPU Adam kernels take float32 and float64 "
                  "parameters only.", flush=True)
        else:
            paddle_runner = _paddle_runner(args, init)
            if paddle_runner is not None:
                runners.append(paddle_runner)
    seconds = {r.name: 0.0 for r in runners}
    initial_loss, _ = loss_and_grads(init, x, y)
    with warnings.catch_warnings():
        # Paddle's advice to use master weights, which the flags turned off on purpose.
        warnings.filterwarnings("ignore", "Accumulating with FP16 or BF16")
        for _ in tqdm(range(args.steps), desc="training", unit="step"):
            for r in runners:
                _, grads = loss_and_grads(r.read(), x, y)
                start = time.perf_counter()
                r.apply(grads)
                seconds[r.name] += time.perf_counter() - start
    ref_weights = reference.read()
    rows = []
    for r in runners:
        weights = r.read()
        loss, _ = loss_and_grads(weights, x, y)
        diff = max(float((a - b).abs().max()) for a, b in zip(weights, ref_weights))
        rows.append(dict(implementation=r.name, initial_loss=initial_loss, final_loss=loss,
                         max_param_diff=diff, optimizer_seconds=seconds[r.name]))
    if baseline is not None:
        rows[0]["fp32_master_loss"] = rows[1]["final_loss"]
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["implementation", "initial loss", "final loss", "max |param - reference|",
              "optimizer time (s)"]
    body = [[r["implementation"], f"{r['initial_loss']:.6f}", f"{r['final_loss']:.6f}",
             f"{r['max_param_diff']:.3e}", f"{r['optimizer_seconds']:.2f}"] for r in rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if "fp32_master_loss" in r:
            base, final = r["fp32_master_loss"], r["final_loss"]
            lines.append(f"\nfinal loss gap to fp32 masters: {final:.6f} - {base:.6f} = "
                         f"{final - base:+.3e} ({(final - base) / base:+.2%})")
    return "\n".join(lines)


class _DemoParser(argparse.ArgumentParser):
    """Refuses combinations of options the optimizer would refuse, the argparse way (usage
    and a message, exit status 2) before anything is imported or trained."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        problem = check_args(ns)
        if problem:
            self.error(problem)
        return ns, rest


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of the low-precision options, or None."""
    if args.dtype != "bfloat16":
        if args.master_weights is not None:
            return (f"--master-weights/--master-weight-format applies to --dtype bfloat16 "
                    f"({args.dtype} parameters are their own master weights)")
        if args.stochastic_rounding:
            return "--stochastic-rounding rounds bfloat16 parameters: add --dtype bfloat16"
    if args.dtype == "float64" and args.moment_dtype == "bfloat16":
        return ("--moment-dtype bfloat16 needs --dtype float32 or bfloat16 (float64 "
                "parameters keep float64 moments)")
    if (args.stochastic_rounding or args.moment_dtype == "bfloat16") \
            and not 0 <= args.seed < 2 ** 63:
        return "--seed keys stochastic rounding's random bits: it must be in [0, 2**63)"
    if args.stochastic_rounding and args.master_weights not in (None, "none"):
        return (f"--stochastic-rounding rounds bfloat16 parameters that have no master "
                f"weights; with --master-weights {args.master_weights} each parameter is its "
                f"master rounded to nearest: drop one of the two (--stochastic-rounding alone "
                f"means --master-weights none)")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _DemoParser(
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
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16"],
                        default="float32",
                        help="parameter dtype (default float32); bfloat16: see the three "
                             "options below")
    parser.add_argument("--master-weights", "--master-weight-format",
                        choices=["fp32", "remainder", "none"], default=None,
                        help="--dtype bfloat16: how the parameters keep master weights: fp32 "
                             "copies (the default; Paddle's multi_precision=True), remainder "
                             "(the parameter is the master's high half, an int16 beside it "
                             "the low half: master_weight_format='remainder'), or none (the "
                             "parameters alone, rounded every step)")
    parser.add_argument("--moment-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="moments kept in float32 (default) or bf16 (stochastically "
                             "rounded; --dtype float32 or bfloat16)")
    parser.add_argument("--stochastic-rounding", action="store_true",
                        help="--dtype bfloat16 without master weights: parameters rounded "
                             "stochastically instead of to nearest even (implies "
                             "--master-weights none); the random bits are keyed by --seed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else the CPU under the interpreter")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data and the initial weights, and the key of "
                             "stochastic rounding's random bits (default 0)")
    parser.add_argument("--no-paddle", action="store_true", help="skip Paddle even if installed")
    return parser
