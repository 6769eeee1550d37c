"""Where and how a launch runs: the device guard every launcher enters, and asynchronous
uploads of host-built tables.

Triton launches a kernel on ``torch.cuda.current_device()`` and on that device's current
stream, whatever device the tensor arguments live on. A launch for parameters on ``cuda:1``
while ``cuda:0`` is current would run on the wrong device (reading addresses it cannot map) or
race with the work that produced the gradients on ``cuda:1``'s stream. So every launcher runs
its kernels inside ``device_guard(device)``: the tensors' device is made current (PyTorch's
``torch.cuda.device``), which also makes Triton pick that device's current stream, the one
PyTorch queued the gradients' producers on. The guard also refuses CUDA tensors when the
process interprets its kernels (``TRITON_INTERPRET=1``): the interpreter runs programs on the
host and would read device addresses as host memory.

Host tables (launch tables, hyper-parameter rows) reach the device through ``upload``: a
pinned staging copy and a non-blocking host-to-device copy, so that rebuilding a table never
stalls the host on the device. Nothing here touches the CUDA driver at import time.

It is also the one home of what every kernel module shares (no kernel module imports another's
private names):

* the launch configuration (``FP_FUSION``, the Adam program shape ``BLOCK_SIZE`` /
  ``NUM_WARPS``, the chunk size ``CHUNK_SIZE`` of the chunk tables);
* the dtype maps (``TRITON_DTYPES``: torch dtype -> Triton dtype; ``compute_dtype_for``);
* the layouts of every device table the kernels read, with named columns, and their
  ``tl.constexpr`` mirrors (the same name with a ``_C`` suffix: ``@triton.jit`` code may read
  only constexpr globals, and reads columns only through these names, never literal offsets):
  the hyper-parameter row (``HYPER_*``, ``HYPER_WIDTH``), a pow slot (``POW_BETA1``,
  ``POW_BETA2``, ``POW_SLOT_WIDTH``), the multi-tensor tensor table (``COL_*``,
  ``TABLE_WIDTH``), its chunk table (``CHUNK_TENSOR``, ``CHUNK_INDEX``, ``CHUNK_TABLE_WIDTH``)
  and the alignment of flat state regions (``STATE_ALIGN``);
* the IEEE arithmetic of every kernel (``sqrt_rn``, ``div_rn``: Triton's ``/`` and
  ``tl.sqrt`` are approximate in float32 on NVIDIA GPUs) and the round-to-nearest-even
  narrowing of a result to its storage dtype (``round_to``, exact under the interpreter too);
* the split of an fp32 master into a bf16 param and an int16 remainder and its inverse
  (``split_master`` / ``join_master``, and their torch twins ``*_host``), the format of
  ``master_weight_format="remainder"``;
* counter-based random bits (``philox_bits``: Philox-4x32-10 keyed by seed, step and element
  index) and the stochastic rounding of fp32 to bf16 (``round_stochastic_bf16``, host twin
  ``round_stochastic_bf16_host``), behind bf16 moments and bf16 params without masters.

The Adam step's own device functions (the per-program scalars, the gradient transform, the
update math, the pow advance) live in ``kernels/update.py``; the kernels in ``adam.py``
(dense, multi-tensor), ``lazy.py`` (sparse rows) and ``norm.py`` (clipping norms).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether this process runs ``@triton.jit`` kernels under the interpreter (decided when
    the kernels are defined, from ``TRITON_INTERPRET``)."""
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRETING = interpreting()


# ---------------------------------------------------------------------------------------------
# Launch configuration

# FMA contraction on (a*b+c in one rounding), as nvcc's default (-fmad=true) with which Paddle's
# CUDA kernels are built. Pinned at every launch: Triton 3.10 changes the default to off.
FP_FUSION = True
# 1024 elements per program with 4 warps: 8 contiguous elements per thread, i.e. two 16-byte
# vector accesses per fp32 stream (one per fp64 stream), the shape measured to keep 16-byte
# LDG/STG without spills on sm_80/sm_90 (see docs/performance.md, the SASS audit).
BLOCK_SIZE = 1024
NUM_WARPS = 4
# Elements per row of a chunk table (multi-tensor update, norm pass): a chunk is one block, so
# every program of the multi-tensor kernel is the dense kernel's program, and the SASS audit
# can read it. The chunk table costs 8 bytes per 1024 elements (55 MB for 7B parameters,
# against 56 GB of moments), built once.
CHUNK_SIZE = BLOCK_SIZE


# ---------------------------------------------------------------------------------------------
# Dtypes

# torch dtype -> the Triton dtype of a kernel argument or pointer element.
TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64,
                 torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
FLOAT_DTYPES = tuple(TRITON_DTYPES)
# Parameter dtypes that may have fp32 master weights and fp32 gradients.
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Accumulation dtypes of a norm's sums of squares.
ACC_DTYPES = (torch.float32, torch.float64)


def compute_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the moments, pows and arithmetic for params of ``param_dtype``."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def grad_dtype_allowed(param_dtype: torch.dtype, grad_dtype: torch.dtype) -> bool:
    """fp16/bf16 params may come with fp32 ("master") gradients; otherwise the dtypes match."""
    return grad_dtype == param_dtype or (param_dtype in LOW_PRECISION
                                         and grad_dtype == torch.float32)


# ---------------------------------------------------------------------------------------------
# Table layouts (host values) and their constexpr mirrors (``NAME_C``, for @triton.jit code)

# Columns of the per-tensor hyper-parameter row, in the compute dtype.
HYPER_LR_SCALE = 0  # multiplies the step's learning rate (param attr lr, AdamW lr_ratio)
HYPER_BETA1 = 1
HYPER_BETA2 = 2
HYPER_EPS = 3
HYPER_L2 = 4  # coupled L2Decay coefficient: g += l2 * p
HYPER_L1 = 5  # coupled L1Decay coefficient: g += l1 * sign(p)
HYPER_WD = 6  # decoupled (AdamW) coefficient: p -= lr_t * wd * p
HYPER_CLIP_MIN = 7  # ClipGradByValue bounds (-inf / inf for a tensor without value clipping)
HYPER_CLIP_MAX = 8
HYPER_SIGN = 9  # multiplies the gradient (MAXIMIZE only): -1 to maximize, else 1
HYPER_LR_INDEX = 10  # which entry of the device learning-rate vector (LR_ON_DEVICE only)
HYPER_WIDTH = 16  # padded to 16 so consecutive rows of a table stay 16-byte aligned

# A pow slot holds (beta1_pow, beta2_pow) padded to 16 bytes in either compute dtype, so both
# slots of a buffer have the same alignment and alternating them never changes the JIT's
# specialization of the pointer.
POW_BETA1 = 0  # beta1^t
POW_BETA2 = 1  # beta2^t
POW_STEP = 2  # t: the steps applied (a skipped AMP step does not count), exact below 2^24
POW_SLOT_WIDTH = 4

# The multi-tensor kernel's tables. A row of the int64 tensor table describes one tensor of a
# bucket; a row of the int32 chunk table is one program's work: a chunk of one tensor.
TABLE_WIDTH = 8  # int64 columns per tensor (64 bytes: rows stay aligned, room to grow)
COL_PARAM_ADDR = 0  # data_ptr() of the param
COL_GRAD_ADDR = 1  # data_ptr() of the gradient (0 when the tensor is inactive this step)
COL_NUMEL = 2  # elements of the param
COL_STATE_OFFSET = 3  # where the tensor's region starts in the bucket's flat state buffers
COL_ACTIVE = 4  # 1 if the tensor is updated this step (its pows advance), else 0
COL_CLIP_INDEX = 5  # which entry of the clip-scale buffer multiplies the gradient (CLIP_SCALE)
COL_RNG_STREAM = 6  # the tensor's random stream (its index in the optimizer): Philox counter
COL_RNG_OFFSET = 7  # the local tensor's first element in the whole tensor (an FSDP2 shard's)
CHUNK_TABLE_WIDTH = 2  # int32 columns per chunk-table row
CHUNK_TENSOR = 0  # the tensor's row in the tensor table
CHUNK_INDEX = 1  # which chunk of CHUNK_SIZE elements of that tensor
# Every tensor's region of a flat state buffer starts at a multiple of 16 elements, so it is
# 16-byte aligned (64 B in fp32) and the kernel can promise so with tl.multiple_of.
STATE_ALIGN = 16

HYPER_LR_SCALE_C = tl.constexpr(HYPER_LR_SCALE)
HYPER_BETA1_C = tl.constexpr(HYPER_BETA1)
HYPER_BETA2_C = tl.constexpr(HYPER_BETA2)
HYPER_EPS_C = tl.constexpr(HYPER_EPS)
HYPER_L2_C = tl.constexpr(HYPER_L2)
HYPER_L1_C = tl.constexpr(HYPER_L1)
HYPER_WD_C = tl.constexpr(HYPER_WD)
HYPER_CLIP_MIN_C = tl.constexpr(HYPER_CLIP_MIN)
HYPER_CLIP_MAX_C = tl.constexpr(HYPER_CLIP_MAX)
HYPER_SIGN_C = tl.constexpr(HYPER_SIGN)
HYPER_LR_INDEX_C = tl.constexpr(HYPER_LR_INDEX)
HYPER_WIDTH_C = tl.constexpr(HYPER_WIDTH)
POW_BETA1_C = tl.constexpr(POW_BETA1)
POW_BETA2_C = tl.constexpr(POW_BETA2)
POW_STEP_C = tl.constexpr(POW_STEP)
POW_SLOT_WIDTH_C = tl.constexpr(POW_SLOT_WIDTH)
TABLE_WIDTH_C = tl.constexpr(TABLE_WIDTH)
COL_PARAM_ADDR_C = tl.constexpr(COL_PARAM_ADDR)
COL_GRAD_ADDR_C = tl.constexpr(COL_GRAD_ADDR)
COL_NUMEL_C = tl.constexpr(COL_NUMEL)
COL_STATE_OFFSET_C = tl.constexpr(COL_STATE_OFFSET)
COL_ACTIVE_C = tl.constexpr(COL_ACTIVE)
COL_CLIP_INDEX_C = tl.constexpr(COL_CLIP_INDEX)
COL_RNG_STREAM_C = tl.constexpr(COL_RNG_STREAM)
COL_RNG_OFFSET_C = tl.constexpr(COL_RNG_OFFSET)
CHUNK_TABLE_WIDTH_C = tl.constexpr(CHUNK_TABLE_WIDTH)
CHUNK_TENSOR_C = tl.constexpr(CHUNK_TENSOR)
CHUNK_INDEX_C = tl.constexpr(CHUNK_INDEX)
STATE_ALIGN_C = tl.constexpr(STATE_ALIGN)


# ---------------------------------------------------------------------------------------------
# Device arithmetic shared by every kernel

# fp32 -> bf16 must round to nearest even. Compiled, ``.to(tl.bfloat16)`` is LLVM's fptrunc,
# i.e. ``cvt.rn.bf16`` (tests/test_compile_lazy.py checks the PTX); but the Triton 3.9
# interpreter truncates toward zero for that conversion (even with
# ``fp_downcast_rounding="rtne"``). Under the interpreter ``round_to`` therefore rounds with
# integer arithmetic instead, so CPU runs give the bits a GPU gives. fp16 is exact in both.
_INTERPRETER_BF16_RNE = tl.constexpr(_INTERPRETING)


@triton.jit
def round_to(p, dtype: tl.constexpr):
    """``p`` (fp32 or fp64) rounded to nearest even in ``dtype`` (a storage dtype)."""
    if _INTERPRETER_BF16_RNE and dtype == tl.bfloat16:
        bits = p.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))  # carries into the exponent as it should
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(p != p, p.to(tl.bfloat16), rounded)  # NaN stays NaN
    else:
        out = p.to(dtype)
    return out


# ---------------------------------------------------------------------------------------------
# fp32 master weights as remainders (``master_weight_format="remainder"``, bf16 params only)
#
# The fp32 master ``w`` of a bf16 param is kept as the pair (param, rem): ``param`` is ``w``
# rounded to nearest bf16 with ties AWAY from zero, ``rem`` the int16 signed difference of
# their bit patterns, so that, in 32-bit two's-complement integer arithmetic,
#
#     bits(w) = (bits(param) << 16) + rem        (rem sign-extended)
#
# Split: ``lo = bits(w) & 0xFFFF``, ``hi = bits(w) >> 16``; param = hi + (lo >= 0x8000), rem =
# lo as int16 (in [-0x8000, 0x7FFF]). Incrementing the bit pattern of the high half raises the
# magnitude by one bf16 ulp (or carries into the exponent, up to inf), so param is w rounded to
# nearest, ties away from zero; then bits(w) - (bits(param) << 16) = lo - 0x10000 * up, which
# is rem. Every fp32 value, subnormals, zeros of either sign and infinities included, is
# rebuilt bit for bit.
#
# Why not round to nearest EVEN (the fp32-master mode's param, ``round_to``): an even bf16
# pattern h is the RNE rounding of 65537 fp32 patterns ((h << 16) - 0x8000 ..
# (h << 16) + 0x8000, both ties rounding to the even h), one more than 16 bits can tell apart,
# so no 16-bit remainder rebuilds every master beside an RNE param (TransformerEngine's
# remainder mode rounds ties away for the same reason). Ties away differs from RNE only on an
# exact tie (low half 0x8000) whose high half is even: the param is then one bf16 ulp larger in
# magnitude than the fp32-master mode's. The masters, moments and pows, which are all the
# update reads, stay bit-identical to the fp32-master mode.
#
# NaN: the carry could turn a NaN's high half into -0.0 / +0.0 (0x7FFF + 1, 0xFFFF + 1: the
# quiet NaN GPUs produce, 0x7FFFFFFF, is one), and a signaling NaN whose payload lies in the
# low half has an infinite high half. So a NaN master's param is its high half with the quiet
# bit set (0x0040: a bf16 NaN of the same sign, no carry) and rem stays lo: the rebuilt master
# is a NaN (its payload may differ). The param is a NaN wherever the master is one, as the
# fp32-master mode's is; every non-NaN fp32 pattern is rebuilt exactly.


@triton.jit
def join_master(param, rem):
    """The fp32 master rebuilt from a bf16 ``param`` and its int16 remainder ``rem``."""
    # int16 -> int32 sign-extends: its high 16 bits are shifted out, as they should be.
    high = param.to(tl.int16, bitcast=True).to(tl.int32) << 16
    return (high + rem.to(tl.int32)).to(tl.float32, bitcast=True)  # wraps modulo 2^32


@triton.jit
def split_master(w):
    """``(param, rem)``: the fp32 master ``w`` as a bf16 param (nearest, ties away from zero)
    and its int16 remainder (see above)."""
    bits = w.to(tl.int32, bitcast=True)
    lo = bits & 0xFFFF
    hi = (bits >> 16) & 0xFFFF
    param_bits = tl.where(w != w, hi | 0x0040, hi + (lo >= 0x8000).to(tl.int32))
    param = param_bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    rem = bits.to(tl.int16)  # the low half, read as signed: lo - 0x10000 * (lo >= 0x8000)
    return param, rem


def split_master_host(master: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``split_master`` in torch: ``(param bf16, rem int16)`` of float32 masters (any shape),
    the same bits the kernels write. Used to load fp32 masters into remainder state."""
    if master.dtype != torch.float32:
        raise TypeError(f"master weights are float32, got {master.dtype}")
    bits = master.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lo = bits & 0xFFFF
    hi = bits >> 16
    param_bits = torch.where(torch.isnan(master.reshape(bits.shape)), hi | 0x0040,
                             hi + (lo >= 0x8000).to(torch.int64))
    param = torch.where(param_bits >= 0x8000, param_bits - 0x10000, param_bits)
    rem = torch.where(lo >= 0x8000, lo - 0x10000, lo)
    return param.to(torch.int16).view(torch.bfloat16), rem.to(torch.int16)


def join_master_host(param: torch.Tensor, rem: torch.Tensor) -> torch.Tensor:
    """``join_master`` in torch: the float32 masters (a new tensor) of bf16 ``param`` and
    int16 ``rem`` of the same shape."""
    if param.dtype != torch.bfloat16 or rem.dtype != torch.int16 or param.shape != rem.shape:
        raise TypeError(f"need a bfloat16 param and an int16 remainder of one shape, got "
                        f"{param.dtype} {tuple(param.shape)} and {rem.dtype} "
                        f"{tuple(rem.shape)}")
    high = (param.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF) << 16
    bits = (high + rem.to(torch.int64)) & 0xFFFFFFFF
    bits = torch.where(bits >= 0x80000000, bits - 0x100000000, bits)
    return bits.to(torch.int32).view(torch.float32)


# ---------------------------------------------------------------------------------------------
# Counter-based randomness and stochastic rounding (``moment_dtype=torch.bfloat16``,
# ``stochastic_rounding=True``)
#
# Random bits come from Philox-4x32-10 (Salmon et al., SC'11; ``tl.philox``, the generator
# behind ``tl.rand``, which runs under the interpreter too), keyed by the optimizer's 64-bit
# seed, with the counter (element index low 32 bits, element index high 32 bits, step,
# stream). The element index is the element's offset within its whole tensor (an FSDP2
# shard's elements count from the shard's first element's place in the whole tensor,
# ``COL_RNG_OFFSET``), the stream is the tensor's index in its optimizer (``COL_RNG_STREAM``)
# and the step is the count of steps the tensor has applied (the pow slot's ``POW_STEP``,
# read on the device), so
#
# * no host value changes between steps: a captured (CUDA graph) step replays with the
#   current step's bits, and nothing is read back;
# * a per-tensor launch and a bucketed launch draw the same bits for an element (bitwise
#   equal paths), and a resumed run (the step count is in the state) draws the bits the
#   uninterrupted run would have;
# * every element of every tensor at every step has its own counter: tensors of one shape
#   (the layers of a model) do not share bits, and a sharded run (dim-0 shards, FSDP2's
#   default) draws the bits of the unsharded run.
#
# One Philox call gives four independent 32-bit words per element: word 0 rounds the param,
# 1 moment1, 2 moment2, 3 moment2_max.
#
# Stochastic rounding of an fp32 ``x`` to bf16: add 16 uniform random bits to the bit pattern
# and truncate the low 16. Within a binade the pattern is linear in the magnitude, and a carry
# out of the mantissa moves to the next binade's first value, which is the next bf16 value up;
# so, writing |x| = hi + f * ulp (f = low half / 2^16), the result is hi + ulp with probability
# exactly f: E[sr(x)] = x for every finite x whose round-up is finite (signs are symmetric:
# the pattern is sign-magnitude). Decisions at the edges:
#
# * NaN stays NaN (a quiet NaN of the same sign: the add could carry a NaN into the sign bit);
#   +-inf and +-0 are unchanged (their low half is zero, nothing carries);
# * a finite ``x`` never becomes inf: above bf16's largest finite value (0x7F7F) the round-up
#   would be inf, and it saturates to +-0x7F7F instead. Such x round down to the max always (a
#   bias of < 1 bf16 ulp, in a range where round-to-nearest would give inf half the time); an
#   inf in a moment or a parameter is not a rounding error anyone wants from an optimizer.


@triton.jit
def philox_bits(seed, step, offs, stream):
    """Four uint32 blocks of Philox-4x32-10 random bits for the elements ``offs`` (int64
    offsets within their whole tensor) of tensor ``stream`` (int scalar, < 2^32) at step
    ``step`` (int32 scalar), keyed by ``seed`` (int)."""
    c0 = (offs & 0xFFFFFFFF).to(tl.uint32)
    c1 = (offs >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + step.to(tl.uint32, bitcast=True)
    c3 = tl.zeros_like(c0) + stream.to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def round_stochastic_bf16(x, bits):
    """``x`` (fp32) rounded to bf16 stochastically with the low 16 of ``bits`` (uint32):
    unbiased, NaN/inf kept, finite values saturate at bf16's max (see above)."""
    xi = x.to(tl.uint32, bitcast=True)
    yi = (xi + (bits & 0xFFFF)) >> 16  # the bf16 pattern (uint32 arithmetic wraps)
    hi = xi >> 16
    finite = (hi & 0x7F80) != 0x7F80
    # A finite x that carried into the all-ones exponent: saturate at +-max (0x7F7F).
    yi = tl.where(finite & ((yi & 0x7F80) == 0x7F80), (hi & 0x8000) | 0x7F7F, yi)
    # NaN: a quiet NaN of the same sign (its own high half, quiet bit set: no carry).
    yi = tl.where(x != x, hi | 0x0040, yi)
    return yi.to(tl.uint16).to(tl.bfloat16, bitcast=True)


def philox_host(seed: int, counters: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox-4x32 in numpy: ``counters`` uint32 ``[n, 4]`` -> uint32 ``[n, 4]`` with the
    key ``(seed low 32 bits, seed high 32 bits)``; the reference ``philox_bits`` is tested
    against."""
    c = counters.astype(np.uint64) & 0xFFFFFFFF
    c0, c1, c2, c3 = (c[:, i].copy() for i in range(4))
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    mask = np.uint64(0xFFFFFFFF)
    a, b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(rounds):
        pa, pb = a * c0, b * c2  # < 2^64: exact in uint64
        c0, c1, c2, c3 = ((pb >> np.uint64(32)) ^ c1 ^ k0, pb & mask,
                          (pa >> np.uint64(32)) ^ c3 ^ k1, pa & mask)
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def round_stochastic_bf16_host(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``round_stochastic_bf16`` in torch: float32 ``x`` and integer ``bits`` of its shape
    (their low 16 bits are used) -> bfloat16, the same bits the kernels write."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic rounding takes float32, got {x.dtype}")
    xi = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    hi = xi >> 16
    y = ((xi + (bits.to(torch.int64) & 0xFFFF)) >> 16) & 0xFFFF
    finite = (hi & 0x7F80) != 0x7F80
    y = torch.where(finite & ((y & 0x7F80) == 0x7F80), (hi & 0x8000) | 0x7F7F, y)
    y = torch.where(torch.isnan(x), hi | 0x0040, y)
    y = torch.where(y >= 0x8000, y - 0x10000, y)
    return y.to(torch.int16).view(torch.bfloat16)


@triton.jit
def sqrt_rn(x):
    """Correctly rounded square root (fp32: sqrt.rn, not Triton's default sqrt.approx.ftz;
    fp64 ``tl.sqrt`` is already sqrt.rn.f64, and ``tl.sqrt_rn`` takes fp32 only)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def div_rn(a, b):
    """Correctly rounded division (fp32: div.rn, not Triton's default div.full, 2 ulp; fp64
    ``/`` is already div.rn.f64)."""
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)

# The devices of the guards currently entered, innermost last: what the tests read to check
# that each launch runs on its tensors' device (a list append/pop costs well under a µs).
_GUARDED: list[torch.device] = []


def check_interpretable(device: torch.device, what: str = "the tensors") -> None:
    """Raise when ``device`` cannot run kernels in this process: under the interpreter only
    CPU tensors can (a CUDA address read as host memory is a segfault, not an error)."""
    if _INTERPRETING and device.type != "cpu":
        raise RuntimeError(
            f"{what} are on {device}, but this process runs Triton kernels under the "
            "interpreter (TRITON_INTERPRET=1), which executes them on the host: unset "
            "TRITON_INTERPRET to run compiled kernels on the GPU, or keep the tensors on the CPU")


class device_guard:  # noqa: N801 (used as a function: ``with device_guard(device):``)
    """Run the enclosed launches on ``device`` and its current stream (see the module
    docstring); refuse devices the process cannot run kernels on. A class rather than a
    generator-based context manager: it is entered at every launch, and this costs less."""

    __slots__ = ("device", "_cuda")

    def __init__(self, device: torch.device) -> None:
        check_interpretable(device)
        self.device = device
        self._cuda = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        _GUARDED.append(self.device)
        if self._cuda is not None:
            self._cuda.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._cuda is not None:
                self._cuda.__exit__(*exc)
        finally:
            _GUARDED.pop()


def guarded_device() -> torch.device | None:
    """The device of the innermost ``device_guard`` entered, or None outside any."""
    return _GUARDED[-1] if _GUARDED else None


def upload(host: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of the host array ``host`` on ``device``, without a host sync.

    On CUDA the values go through a fresh pinned buffer and a non-blocking copy, queued on the
    device's current stream; PyTorch's caching host allocator keeps that buffer alive until the
    copy has run (it records an event on the stream), so the caller may rebuild its host table
    at once. On the CPU it is a plain copy.
    """
    if isinstance(host, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(host).copy())
    else:
        tensor = host.detach().clone(memory_format=torch.contiguous_format)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device, non_blocking=True)


def lr_arguments(lr: float | torch.Tensor, device: torch.device
                 ) -> tuple[float, torch.Tensor | None]:
    """``(lr, lr_ptr)`` of an update launch: a Python float travels as the kernel's float64
    argument; a contiguous float64 vector on the launch's device is read by the kernel
    (``LR_ON_DEVICE``: each tensor reads the entry its hyper row's ``HYPER_LR_INDEX`` names),
    so that every step passes the same arguments, as a CUDA graph replays them."""
    if isinstance(lr, torch.Tensor):
        if not (lr.dtype == torch.float64 and lr.dim() == 1 and lr.numel() >= 1
                and lr.is_contiguous() and lr.device == device):
            raise ValueError(f"a tensor learning rate must be a contiguous float64 vector on "
                             f"{device}, got {lr.dtype} {tuple(lr.shape)} on {lr.device}")
        return 0.0, lr
    return float(lr), None
