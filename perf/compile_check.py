"""Compile every kernel specialization triton_adam can launch, for sm_80 and sm_90, without a GPU.

The Triton interpreter (which the tests use) accepts some programs the compiler rejects and vice
versa; compiling each specialization for real GPU targets is the cheap second check. CI runs
it through ``tests/test_compile.py``; run it by hand with::

    python perf/compile_check.py            # prints one line per specialization and target

It must run without ``TRITON_INTERPRET=1`` (under the interpreter ``@triton.jit`` functions are
not compilable objects). The SASS audit (``perf/audit.py``) builds on ``specializations`` and
``compile_specialization``: a new kernel or mode is one more builder in ``specializations``,
and both tools pick it up. The sparse-row kernels of ``kernels/lazy.py`` (the lazy update, with
clipping and AMP, and the sparse sum of squares) have loops, which the audit's path analysis
does not follow: ``tests/test_compile_lazy.py`` compiles and audits them with a loop-aware
analysis of its own.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass, field

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("perf/compile_check.py compiles kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from triton_adam.kernels import adam  # noqa: E402

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}

_TRITON_TYPE = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
                torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Specialization:
    """One compiled variant of a kernel: its argument types, constexprs and alignment facts."""

    kernel: object  # the @triton.jit function
    name: str  # human-readable mode, e.g. "fp32 amsgrad l2"
    signature: dict  # argument name -> Triton type string ("*fp32", "i32", "constexpr", ...)
    constexprs: dict  # argument name -> value
    divisible_by_16: tuple = field(default_factory=tuple)  # args the JIT would mark divisible
    num_warps: int = field(kw_only=True)  # as the launcher passes it
    # What the SASS audit (perf/audit.py) needs to turn instructions into bytes per element:
    elements_per_program: int = field(kw_only=True)
    floor_mode: str = field(kw_only=True)  # the row of perf/floors.py FLOORS to meet
    vector_access: bool = field(default=True, kw_only=True)  # full blocks use 16-byte access
    # Why this row is in the audit when its name alone does not say (the summary shows it).
    note: str = field(default="", kw_only=True)

    def source(self) -> ASTSource:
        names = self.kernel.arg_names
        attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in self.divisible_by_16}
        return ASTSource(fn=self.kernel, signature=self.signature, constexprs=self.constexprs,
                         attrs=attrs)


def _low_precision_variants() -> list[tuple]:
    """fp16/bf16 params: (param, grad, amsgrad, coupled, decoupled, n type, clip, master mode)
    with fp32 master weights (also with fp32 gradients, AMP's loss scale and overflow flag,
    and decay), and without (computed in fp32, rounded every step); bf16 params with the
    master as a remainder (``master_weight_format="remainder"``: the int16 remainder at
    ``master_ptr``, the param read too), plain, with everything, and with AMP."""
    out = []
    for d in (torch.bfloat16, torch.float16):
        out += [(d, d, False, False, False, "i32", False, "master"),
                (d, d, True, True, True, "i32", True, "master"),
                (d, torch.float32, False, False, False, "i32", False, "master"),
                (d, d, False, False, False, "i32", False, "master amp"),
                (d, d, False, False, False, "i32", False, "no-master")]
    b = torch.bfloat16
    out += [(b, b, False, False, False, "i32", False, "master remainder"),
            (b, b, True, True, True, "i32", True, "master remainder"),
            (b, b, False, False, False, "i32", False, "master remainder amp")]
    return out + _low_byte_variants()


def _low_byte_variants() -> list[tuple]:
    """bf16 moments (``moments:bf16``: the moment buffers are bf16, stored rounded
    stochastically) and bf16 params rounded stochastically without masters
    (``stochastic-rounding``), in the variant tuple of ``_low_precision_variants``: with the
    master as a remainder, without master, with fp32 masters and with fp32 params, each plain
    and with amsgrad (one more 2-byte stream) and everything else on (the most registers:
    Philox's four words are live beside the update); and a stochastically rounded bf16 param
    with fp32 moments."""
    b, f = torch.bfloat16, torch.float32
    out = []
    for d, mp in ((b, "master remainder moments:bf16"), (b, "stochastic-rounding moments:bf16"),
                  (f, "moments:bf16"), (b, "master moments:bf16")):
        out += [(d, d, False, False, False, "i32", False, mp),
                (d, d, True, True, True, "i32", True, mp)]
    out += [(b, b, False, False, False, "i32", False, "stochastic-rounding")]
    return out


def _capturable_variants() -> list[tuple]:
    """Capturable steps (the learning rate read from device memory, ``LR_ON_DEVICE``), in the
    variant tuple of ``_low_precision_variants``: one more 8-byte load per program, the same
    bytes per element."""
    return [(torch.float32, torch.float32, False, False, True, "i32", True, "capturable"),
            (torch.float32, torch.float32, True, True, False, "i32", False, "capturable"),
            (torch.float64, torch.float64, False, False, True, "i32", True, "capturable"),
            (torch.bfloat16, torch.bfloat16, False, False, True, "i32", True,
             "master amp capturable")]


def _torch_variants() -> list[tuple]:
    """The PyTorch face's updates (``triton_adam.optim``): torch's bias corrections from the
    step count (``BIAS_FROM_STEP``: two powers, 100 scalar multiplies per program) and the
    learning rate of each parameter group read from the device; with ``maximize`` one more
    multiply per element. The same bytes per element as the other modes."""
    return [(torch.float32, torch.float32, True, False, True, "i32", True, "torch maximize"),
            (torch.float32, torch.float32, False, True, False, "i32", False, "torch"),
            (torch.float64, torch.float64, True, False, True, "i32", False, "torch"),
            (torch.bfloat16, torch.bfloat16, False, False, True, "i32", True,
             "master amp torch")]


def _mode_words(mp: str | None) -> dict[str, bool]:
    """The constexpr switches a variant's mode string names (master weights, AMP, a
    capturable or PyTorch-face step, maximize)."""
    words = set((mp or "").split())
    torch_face = "torch" in words
    return dict(master="master" in words, master_remainder="remainder" in words,
                unscale="amp" in words, skip_on_inf="amp" in words,
                lr_on_device="capturable" in words or torch_face, bias_from_step=torch_face,
                maximize="maximize" in words,
                stochastic_rounding="stochastic-rounding" in words)


# The integer arguments of stochastic rounding's random stream (kernels/adam.py): the Philox
# key ``rng_seed`` (an int in [0, 2^63)) and, where a kernel takes them as arguments rather
# than from its tensor table, the tensor's stream (in [0, 2^32)) and its first element's
# offset in the whole tensor (in [0, 2^62)). The kernels mark them ``do_not_specialize``, so
# no value (1, a multiple of 16) compiles a variant of its own, and they are compiled here as
# i64: the one type that holds every value of their ranges, the type the JIT gives a seed of
# 2^31 or more (tests/test_compile.py checks what the JIT's binder makes of each value).
RNG_INTS = ("rng_seed", "rng_stream", "rng_offset")


def _rng_signature(kernel) -> dict[str, str]:
    """The signature entries of ``kernel``'s random-stream ints (those it takes)."""
    return {a: "i64" for a in RNG_INTS if a in kernel.arg_names}


def _moment_type(dtype: torch.dtype, mp: str | None) -> str:
    """The element type of the moment buffers: the compute dtype, or bf16 (``moments:bf16``;
    the kernels read it from the pointer, nothing else says so)."""
    if "moments:bf16" in (mp or "").split():
        return "bf16"
    return _TRITON_TYPE[adam.compute_dtype_for(dtype)]


def _master_type(dtype: torch.dtype, mp: str | None) -> str:
    """The element type at ``master_ptr``: fp32 masters, int16 remainders, or (no master) the
    moments' type, since the launchers then pass ``exp_avg`` there."""
    words = _mode_words(mp)
    if words["master_remainder"]:
        return "*i16"
    return "*fp32" if words["master"] else f"*{_moment_type(dtype, mp)}"


def _floor_mode(dtype: torch.dtype, grad: torch.dtype, amsgrad: bool, mp: str | None) -> str:
    """The perf/floors.py row a specialization must meet."""
    words = _mode_words(mp)
    if dtype not in (torch.float16, torch.bfloat16):
        kind = _TRITON_TYPE[dtype]
    else:
        kind = ("half remainder" if words["master_remainder"]
                else "half master" if words["master"]
                else "half stochastic" if words["stochastic_rounding"] else "half")
    return (kind + (" fp32-grad" if grad == torch.float32 and grad != dtype else "")
            + " bf16-moments" * (_moment_type(dtype, mp) == "bf16") + " amsgrad" * amsgrad)


def adam_specializations() -> list[Specialization]:
    """Every variant of the dense update the optimizer can launch.

    Parameter dtype x amsgrad x coupled decay x decoupled decay, each with the element count
    as a 16-divisible i32 (the common case, where full blocks get vector access) and as an i64
    with no divisibility (tensors beyond 2^31 elements; odd sizes).
    """
    specs = []
    pointer_args = ["param_ptr", "grad_ptr", "exp_avg_ptr", "exp_avg_sq_ptr",
                    "max_exp_avg_sq_ptr", "hyper_ptr", "pows_in_ptr", "pows_out_ptr",
                    "clip_scale_ptr", "master_ptr", "grad_scale_ptr", "found_inf_ptr"]
    variants = [(d, d, a, c, w, n, False, None) for d, a, c, w, n in itertools.product(
        (torch.float32, torch.float64), (False, True), (False, True), (False, True),
        ("i32", "i64"))]
    # Gradient clipping (a norm clip's scale and value bounds, both applied as g is read).
    variants += [(d, d, a, False, False, "i32", True, None)
                 for d in (torch.float32, torch.float64) for a in (False, True)]
    variants += _low_precision_variants() + _capturable_variants() + _torch_variants()
    for dtype, grad, amsgrad, coupled, decoupled, n_type, clip, mp in variants:
        p_ty = _TRITON_TYPE[dtype]
        c_ty = _TRITON_TYPE[adam.compute_dtype_for(dtype)]
        m_ty = _moment_type(dtype, mp)
        constexprs = adam.kernel_constexprs(amsgrad=amsgrad, coupled_decay=coupled,
                                            decoupled_decay=decoupled, clip_scale=clip,
                                            clip_value=clip, **_mode_words(mp))
        signature = {
            "param_ptr": f"*{p_ty}", "grad_ptr": f"*{_TRITON_TYPE[grad]}",
            "exp_avg_ptr": f"*{m_ty}", "exp_avg_sq_ptr": f"*{m_ty}",
            "max_exp_avg_sq_ptr": f"*{m_ty}", "hyper_ptr": f"*{c_ty}",
            "pows_in_ptr": f"*{c_ty}", "pows_out_ptr": f"*{c_ty}",
            "clip_scale_ptr": f"*{c_ty}", "master_ptr": _master_type(dtype, mp),
            "grad_scale_ptr": "*fp32",
            "found_inf_ptr": "*fp32", "lr": "fp64", "lr_ptr": "*fp64", "n_elements": n_type,
            **_rng_signature(adam._adam_kernel),
            **{k: "constexpr" for k in constexprs},
        }
        divisible = tuple(pointer_args) + (("n_elements",) if n_type == "i32" else ())
        mode = " ".join([p_ty] + ([f"grad:{_TRITON_TYPE[grad]}"] if grad != dtype else [])
                        + ([mp] if mp else []) + ["amsgrad"] * amsgrad
                        + ["coupled-decay"] * coupled + ["decoupled-decay"] * decoupled
                        + ["clip"] * clip + [f"n:{n_type}"])
        specs.append(Specialization(
            adam._adam_kernel, f"adam {mode}", signature, constexprs, divisible,
            num_warps=adam.NUM_WARPS, elements_per_program=constexprs["BLOCK"],
            floor_mode=_floor_mode(dtype, grad, amsgrad, mp)))
    return specs


def tensor_list_specializations() -> list[Specialization]:
    """Every variant of the multi-tensor update (``use_multi_tensor=True``).

    Parameter dtype x amsgrad x coupled decay x decoupled decay, as the optimizer launches
    them (``aligned=True``: each table row's own addresses decide on the device between the
    16-byte full-block path and the scalar masked path), plus the scalar-only specialization
    (``aligned=False``) for each dtype. The ``mixed-alignment`` rows are the specialization a
    bucket with an unaligned member (a view at an odd offset, an FSDP2 gradient shard) and
    aligned ones launches: the same one, since alignment is decided per row; the audit shows
    that the aligned rows keep 16-byte access there. The kernel's buffers (tables, flat
    state) are the optimizer's own allocations, so the JIT marks them divisible by 16.
    """
    specs = []
    pointer_args = ["tensor_table_ptr", "chunk_table_ptr", "exp_avg_ptr", "exp_avg_sq_ptr",
                    "max_exp_avg_sq_ptr", "hyper_ptr", "pows_in_ptr", "pows_out_ptr",
                    "clip_scales_ptr"]
    variants = [(d, a, c, w, True, False) for d, a, c, w in itertools.product(
        (torch.float32, torch.float64), (False, True), (False, True), (False, True))]
    variants += [(d, False, False, False, False, False) for d in (torch.float32, torch.float64)]
    variants += [(d, False, False, False, "mixed", False) for d in (torch.float32, torch.float64)]
    variants += [(d, a, False, False, True, True) for d in (torch.float32, torch.float64)
                 for a in (False, True)]
    variants = [(d, d, a, c, w, al, cl, None) for d, a, c, w, al, cl in variants]
    variants += [(d, g, a, c, w, True, cl, mp)
                 for d, g, a, c, w, _, cl, mp in _low_precision_variants()
                 + _capturable_variants() + _torch_variants()]
    pointer_args += ["master_ptr", "grad_scale_ptr", "found_inf_ptr"]
    for dtype, grad, amsgrad, coupled, decoupled, aligned, clip, mp in variants:
        p_ty = _TRITON_TYPE[dtype]
        c_ty = _TRITON_TYPE[adam.compute_dtype_for(dtype)]
        m_ty = _moment_type(dtype, mp)
        constexprs = adam.tensor_list_constexprs(
            param_dtype=dtype, grad_dtype=grad, aligned=bool(aligned), amsgrad=amsgrad,
            coupled_decay=coupled, decoupled_decay=decoupled, clip_scale=clip, clip_value=clip,
            **_mode_words(mp))
        signature = {
            "tensor_table_ptr": "*i64", "chunk_table_ptr": "*i32", "exp_avg_ptr": f"*{m_ty}",
            "exp_avg_sq_ptr": f"*{m_ty}", "max_exp_avg_sq_ptr": f"*{m_ty}",
            "hyper_ptr": f"*{c_ty}", "pows_in_ptr": f"*{c_ty}", "pows_out_ptr": f"*{c_ty}",
            "clip_scales_ptr": f"*{c_ty}", "master_ptr": _master_type(dtype, mp),
            "grad_scale_ptr": "*fp32",
            "found_inf_ptr": "*fp32", "lr": "fp64", "lr_ptr": "*fp64", "n_tensors": "i32",
            "n_chunks": "i32", **_rng_signature(adam._adam_tensor_list_kernel),
            **{k: "constexpr" for k in constexprs},
        }
        mode = " ".join([p_ty] + ([f"grad:{_TRITON_TYPE[grad]}"] if grad != dtype else [])
                        + ([mp] if mp else []) + ["amsgrad"] * amsgrad
                        + ["coupled-decay"] * coupled + ["decoupled-decay"] * decoupled
                        + ["clip"] * clip + ([] if aligned else ["unaligned"])
                        + (["mixed-alignment"] if aligned == "mixed" else []))
        specs.append(Specialization(
            adam._adam_tensor_list_kernel, f"tensor-list {mode}", signature, constexprs,
            tuple(pointer_args), num_warps=adam.NUM_WARPS,
            elements_per_program=constexprs["BLOCK"],
            floor_mode=_floor_mode(dtype, grad, amsgrad, mp), vector_access=bool(aligned),
            note={"mixed": "aligned rows of a bucket with an unaligned member",
                  False: "scalar-only specialization"}.get(aligned, "")))
    return specs


def norm_specializations() -> list[Specialization]:
    """The global-norm pass, one block per chunk-table row (the loop-free specialization the
    SASS analysis can read), aligned, for every gradient dtype. Its floor is one read of the
    gradient (``perf/floors.py``, "norm <dtype>"). The optimizer launches chunks of
    ``NORM_CHUNK_SIZE`` (16 blocks: 16x fewer partials for the finalize), whose loop body is
    the same code; ``tests/test_compile_norm.py`` checks that variant's loop (each element
    loaded once, 16-byte, unpredicated)."""
    from triton_adam.kernels import norm

    specs = []
    for grad in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        acc = norm.accumulation_dtype_for([grad])
        constexprs = norm.sum_squares_constexprs(grad_dtype=grad, acc_dtype=acc, aligned=True,
                                                 chunk_size=adam.CHUNK_SIZE)
        signature = {"tensor_table_ptr": "*i64", "chunk_table_ptr": "*i32",
                     "partials_ptr": f"*{_TRITON_TYPE[acc]}",
                     **{k: "constexpr" for k in constexprs}}
        g_ty = _TRITON_TYPE[grad]
        specs.append(Specialization(
            norm._sum_squares_kernel, f"norm {g_ty}", signature, constexprs,
            ("tensor_table_ptr", "chunk_table_ptr", "partials_ptr"), num_warps=adam.NUM_WARPS,
            elements_per_program=constexprs["BLOCK"], floor_mode=f"norm {g_ty}"))
    return specs


def specializations() -> list[Specialization]:
    """All kernel specializations of the library (extended as kernels land)."""
    return adam_specializations() + tensor_list_specializations() + norm_specializations()


def compile_specialization(spec: Specialization, target: GPUTarget):
    """Compile one specialization for one target; returns triton's CompiledKernel."""
    return triton.compile(spec.source(), target=target,
                          options={"num_warps": spec.num_warps,
                                   "enable_fp_fusion": adam.FP_FUSION})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(TARGETS), action="append",
                        help="compile for this target only (repeatable; default: all)")
    args = parser.parse_args(argv)
    targets = args.target or sorted(TARGETS)
    failures = 0
    specs = specializations()
    for spec in specs:
        for target_name in targets:
            start = time.perf_counter()
            try:
                compiled = compile_specialization(spec, TARGETS[target_name])
                status = f"ok  cubin={len(compiled.asm['cubin'])} bytes"
            except Exception as exc:  # report every failure, then fail the run
                failures += 1
                status = f"FAILED: {type(exc).__name__}: {exc}".splitlines()[0]
            print(f"{target_name}  {spec.name:<48} {status}  "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)
    print(f"{len(specs) * len(targets) - failures} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
