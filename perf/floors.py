"""How many bytes per parameter must one optimizer step move, per mode, and how many do the peers move?

The floor is each input read once and each output written once
(``docs/performance.md`` section 1). Every performance instrument divides by these
numbers: the SASS audit compares the compiled kernel with them, the GPU benchmark turns times
into GB/s with them, the plot draws them. A new mode (bf16 + master weights, global-norm
clipping) is one more row in ``FLOORS``; a new peer is one more row in ``PEER_GRAD_PASSES``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Floor:
    """Bytes per parameter a step of one mode must read and write, at the least."""

    read: int
    write: int
    grad_bytes: int  # bytes of one gradient element: what each extra pass over g costs

    @property
    def total(self) -> int:
        return self.read + self.write


# mode -> floor. Decay variants (L1/L2, AdamW) move no extra bytes: they map to their
# dtype's row. Rows to add with their issues: "bf16 master" Floor(14, 14, 2) (g 2, master,
# m, v 12 read; master, m, v 12 and p 2 written), and "+ clip" rows that read g once more.
FLOORS: dict[str, Floor] = {
    "fp32": Floor(read=16, write=12, grad_bytes=4),  # p, g, m, v / p, m, v
    "fp32 amsgrad": Floor(read=20, write=16, grad_bytes=4),  # + vmax / + vmax
    "fp64": Floor(read=32, write=24, grad_bytes=8),
    "fp64 amsgrad": Floor(read=40, write=32, grad_bytes=8),
    # fp16/bf16 params with fp32 master weights: g 2, master, m, v 12 read; master, m, v 12
    # and p 2 written (docs/performance.md section 1). With fp32 ("master") gradients the
    # read of g is 4. Without master weights p is read (2) instead of the master.
    "half master": Floor(read=14, write=14, grad_bytes=2),
    "half master amsgrad": Floor(read=18, write=18, grad_bytes=2),
    "half master fp32-grad": Floor(read=16, write=14, grad_bytes=4),
    "half": Floor(read=12, write=10, grad_bytes=2),
    # bf16 params with the master as a remainder (master_weight_format="remainder"): g, p and
    # the int16 remainder 2 each, m, v 8 read (14); p, remainder 2 each, m, v 8 written (12):
    # 26 B, 2 less than "half master" (the fp32 master's 4 + 4 become p 2 + rem 2 + 2 + 2).
    "half remainder": Floor(read=14, write=12, grad_bytes=2),
    "half remainder amsgrad": Floor(read=18, write=16, grad_bytes=2),
    # bf16 moments (moment_dtype=torch.bfloat16: m, v and vmax stored as bf16, rounded
    # stochastically; the update still computes in fp32) halve the moments' 4 + 4 read and
    # 4 + 4 written; the random bits are computed (Philox), never loaded. Per element:
    # - remainder master: g, p, rem, m, v 2 each read (10); p, rem, m, v written (8): 18 B;
    #   amsgrad reads and writes vmax 2 more: 12 + 10 = 22 B.
    "half remainder bf16-moments": Floor(read=10, write=8, grad_bytes=2),
    "half remainder bf16-moments amsgrad": Floor(read=12, write=10, grad_bytes=2),
    # - fp32 master: g 2, master 4, m, v 2 each read (10); master 4, p 2, m, v 2 each written
    #   (10): 20 B; amsgrad 12 + 12 = 24 B. (2 B more than with the remainder: both read 4 B
    #   of master, master 4 or p 2 + rem 2, but this mode writes master 4 + p 2, the remainder
    #   mode p 2 + rem 2.)
    "half master bf16-moments": Floor(read=10, write=10, grad_bytes=2),
    "half master bf16-moments amsgrad": Floor(read=12, write=12, grad_bytes=2),
    # - a bf16 param without master, rounded stochastically (stochastic_rounding=True): g, p,
    #   m, v 2 each read (8); p, m, v written (6): 14 B; amsgrad 10 + 8 = 18 B.
    "half stochastic bf16-moments": Floor(read=8, write=6, grad_bytes=2),
    "half stochastic bf16-moments amsgrad": Floor(read=10, write=8, grad_bytes=2),
    # - the same param with fp32 moments: g, p 2 each, m, v 4 each read (12); p 2, m, v 4 each
    #   written (10): 22 B, the bytes of "half" (stochastic rounding changes the bits written,
    #   not their number); a row of its own so the audit shows the mode by name.
    "half stochastic": Floor(read=12, write=10, grad_bytes=2),
    # - fp32 params and grads with bf16 moments: p, g 4 each, m, v 2 each read (12); p 4, m, v
    #   2 each written (8): 20 B (28 with fp32 moments); amsgrad 14 + 10 = 24 B.
    "fp32 bf16-moments": Floor(read=12, write=8, grad_bytes=4),
    "fp32 bf16-moments amsgrad": Floor(read=14, write=10, grad_bytes=4),
    # The global-norm pass of clipping: one read of the gradient (its partial sums are per
    # program). A clipped step moves the update's floor plus this.
    "norm fp32": Floor(read=4, write=0, grad_bytes=4),
    "norm bf16": Floor(read=2, write=0, grad_bytes=2),
    "norm fp16": Floor(read=2, write=0, grad_bytes=2),
    "norm fp64": Floor(read=8, write=0, grad_bytes=8),
}

# Peer -> extra passes over the gradient on top of the single-pass update.
# torch.optim.Adam(fused=True) is itself single-pass; clip_grad_norm_ reads g for the norm,
# then reads and writes it again to scale it: 3 more passes (docs/performance.md section 1).
PEER_GRAD_PASSES: dict[str, int] = {
    "torch Adam fused": 0,
    "clip_grad_norm_ + torch Adam fused": 3,
}


def floor_bytes(mode: str) -> int:
    """The floor in bytes per parameter of ``mode`` (a ``FLOORS`` key)."""
    return FLOORS[mode].total


def peer_bytes(peer: str, mode: str) -> int:
    """Bytes per parameter ``peer`` moves for one step of ``mode``."""
    floor = FLOORS[mode]
    return floor.total + PEER_GRAD_PASSES[peer] * floor.grad_bytes
