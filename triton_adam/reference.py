"""The float64 reference: what one Adam/AdamW step computes, one tensor at a time.

This is the specification every kernel is tested against (``docs/paddle-compatibility.md``
sections 1 and 2), written for reading rather than speed: plain PyTorch, float64 throughout,
no in-place tricks, and the algebraic form Paddle's CPU kernel uses (the kernels use the
equivalent form of Paddle's GPU kernel, so a test also checks that the two forms agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AdamTensorState:
    """One parameter and its accumulators, all float64."""

    param: torch.Tensor
    moment1: torch.Tensor
    moment2: torch.Tensor
    moment2_max: torch.Tensor | None  # only with amsgrad
    beta1_pow: float  # beta1^t for the t-th update
    beta2_pow: float


def init_state(param: torch.Tensor, *, beta1: float, beta2: float,
               amsgrad: bool) -> AdamTensorState:
    """Fresh state for ``param``: zero moments, pows at beta^1 (Paddle's initial values)."""
    p = param.detach().to(torch.float64).clone()
    return AdamTensorState(
        param=p, moment1=torch.zeros_like(p), moment2=torch.zeros_like(p),
        moment2_max=torch.zeros_like(p) if amsgrad else None,
        beta1_pow=float(beta1), beta2_pow=float(beta2))


def adam_step(state: AdamTensorState, grad: torch.Tensor, *, lr: float, beta1: float,
              beta2: float, epsilon: float, lr_scale: float = 1.0, l2: float = 0.0,
              l1: float = 0.0, weight_decay: float = 0.0) -> AdamTensorState:
    """One step, returning the new state (the input state is not modified).

    Args:
        state: the parameter and accumulators before the step.
        grad: the raw gradient (no decay term added).
        lr: the step's learning rate; ``lr_scale`` multiplies it (per-parameter learning
            rate, AdamW's ``lr_ratio``).
        beta1, beta2, epsilon: Adam's hyper-parameters.
        l2, l1: coupled decay coefficients (``L2Decay``, ``L1Decay``), added to the gradient.
        weight_decay: decoupled (AdamW) coefficient, applied to the pre-update parameter.
    """
    p = state.param
    g = grad.detach().to(torch.float64)
    lr = lr * lr_scale

    # Regularization: a new gradient, the sum of the raw one and the decay terms.
    g = g + l2 * p + l1 * torch.sign(p)
    # AdamW: decay the parameter itself, scaled by the learning rate, before the update.
    p = p - lr * weight_decay * p

    m = beta1 * state.moment1 + (1 - beta1) * g
    v = beta2 * state.moment2 + (1 - beta2) * g * g
    vmax = None if state.moment2_max is None else torch.maximum(state.moment2_max, v)
    lr_t = lr * (1 - state.beta2_pow) ** 0.5 / (1 - state.beta1_pow)
    eps_t = epsilon * (1 - state.beta2_pow) ** 0.5
    p = p - lr_t * m / (torch.sqrt(v if vmax is None else vmax) + eps_t)

    return AdamTensorState(param=p, moment1=m, moment2=v, moment2_max=vmax,
                           beta1_pow=state.beta1_pow * beta1,
                           beta2_pow=state.beta2_pow * beta2)


# ---------------------------------------------------------------------------------------------
# Sparse gradients (``docs/paddle-compatibility.md`` section 4: the
# section-1 formula of Paddle's GPU kernel for every updated row). Added for the lazy-mode
# kernel (kernels/lazy.py); the functions above are unchanged.
# ---------------------------------------------------------------------------------------------


def merge_sparse_rows(indices: torch.Tensor, values: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum duplicate rows and sort: ``(rows, grad_rows)`` with ``rows`` distinct ascending
    int64 ids and ``grad_rows[i]`` the float64 sum of the ``values`` rows whose id is
    ``rows[i]``. ``indices`` is ``[nnz]`` or ``[1, nnz]`` (a COO tensor's ``_indices()``)."""
    ids = indices.reshape(-1).to(torch.int64)
    rows, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    summed = torch.zeros((rows.numel(),) + tuple(values.shape[1:]), dtype=torch.float64)
    summed.index_add_(0, inverse, values.detach().to(torch.float64))
    return rows, summed


def sparse_to_dense(indices: torch.Tensor, values: torch.Tensor,
                    shape: tuple[int, ...]) -> torch.Tensor:
    """The float64 dense gradient of a sparse one: zero rows where no id points."""
    rows, summed = merge_sparse_rows(indices, values)
    dense = torch.zeros(shape, dtype=torch.float64)
    dense[rows] = summed
    return dense


def _copy_state(state: AdamTensorState) -> AdamTensorState:
    clone = None if state.moment2_max is None else state.moment2_max.clone()
    return AdamTensorState(param=state.param.clone(), moment1=state.moment1.clone(),
                           moment2=state.moment2.clone(), moment2_max=clone,
                           beta1_pow=state.beta1_pow, beta2_pow=state.beta2_pow)


def lazy_adam_step(state: AdamTensorState, indices: torch.Tensor, values: torch.Tensor,
                   **hyper: float) -> AdamTensorState:
    """One ``lazy_mode=True`` step with a sparse gradient, returning the new state.

    Duplicate ids are summed; only the rows present are updated, each by ``adam_step``'s
    formula (decay terms included) with the tensor's pows; absent rows keep their param and
    accumulators exactly; the pows advance once. No ids at all: the state is unchanged (no
    pow advance). ``hyper``: the keyword arguments of ``adam_step`` (lr, beta1, beta2,
    epsilon, lr_scale, l2, l1, weight_decay).
    """
    new = _copy_state(state)
    if indices.numel() == 0:
        return new
    rows, grad_rows = merge_sparse_rows(indices, values)
    present = AdamTensorState(
        param=state.param[rows], moment1=state.moment1[rows], moment2=state.moment2[rows],
        moment2_max=None if state.moment2_max is None else state.moment2_max[rows],
        beta1_pow=state.beta1_pow, beta2_pow=state.beta2_pow)
    updated = adam_step(present, grad_rows, **hyper)
    new.param[rows] = updated.param
    new.moment1[rows] = updated.moment1
    new.moment2[rows] = updated.moment2
    if new.moment2_max is not None:
        new.moment2_max[rows] = updated.moment2_max
    new.beta1_pow, new.beta2_pow = updated.beta1_pow, updated.beta2_pow
    return new


def sparse_dense_adam_step(state: AdamTensorState, indices: torch.Tensor, values: torch.Tensor,
                           **hyper: float) -> AdamTensorState:
    """One ``lazy_mode=False`` step with a sparse gradient: the dense step of the densified
    gradient (absent rows have zero gradient), except that no ids at all changes nothing."""
    if indices.numel() == 0:
        return _copy_state(state)
    return adam_step(state, sparse_to_dense(indices, values, tuple(state.param.shape)), **hyper)
