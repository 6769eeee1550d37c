"""Every kernel specialization compiles for sm_80 and sm_90 (no GPU needed), and the
random-stream ints bind as the compile check compiles them.

The compiler runs in a subprocess: this test session interprets kernels (TRITON_INTERPRET=1),
and interpreted ``@triton.jit`` functions cannot be compiled.
"""

import json
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_specialization_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(ROOT / "perf" / "compile_check.py")],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    compiled, failed = int(summary.split()[0]), int(summary.split()[2])
    assert failed == 0 and compiled >= 2 * 32, summary  # 32 dense-update variants x 2 targets
    assert "sm_80" in result.stdout and "sm_90" in result.stdout


# What the JIT's argument binder makes of the random-stream ints (compile_check.RNG_INTS),
# for values across each one's range: (type, specialization attribute) per value, printed as
# JSON by a subprocess (the binder is the compiled path's; this session interprets). Uses
# triton.runtime.jit.create_function_from_signature, the function @triton.jit launches bind
# their arguments with (Triton 3.x), on the kernel's own parameter objects (annotations and
# do_not_specialize included).
_BINDER = """
import inspect, json, sys
sys.path.insert(0, sys.argv[1])
import compile_check
from triton.compiler.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
from triton_adam.kernels import adam

RANGES = {"rng_seed": 2 ** 63, "rng_stream": 2 ** 32, "rng_offset": 2 ** 62}
backend = make_backend(compile_check.TARGETS["sm_90"])
specs = compile_check.adam_specializations() + compile_check.tensor_list_specializations()
out = {}
for kernel in (adam._adam_kernel, adam._adam_tensor_list_kernel):
    for name in compile_check.RNG_INTS:
        if name not in kernel.arg_names:
            continue
        param = kernel.params[kernel.arg_names.index(name)]
        bind = create_function_from_signature(
            inspect.Signature([kernel.signature.parameters[name]]), [param], backend)
        top = RANGES[name]
        values = sorted({0, 1, 2, 16, 17, 2 ** 31 - 1, 2 ** 31, top - 16, top - 1})
        out[f"{kernel.fn.__name__}.{name}"] = {
            "binder": {str(v): list(bind(v)[1][0]) for v in values},
            "compiled": sorted({s.signature[name] for s in specs if s.kernel is kernel}),
            "divisible": any(name in s.divisible_by_16 for s in specs if s.kernel is kernel)}
print(json.dumps(out))
"""


def _rng_binding() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _BINDER, str(ROOT / "perf")], env=env,
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "_adam_kernel.rng_seed" in out and "_adam_tensor_list_kernel.rng_seed" in out, out
    return out


def test_random_stream_ints_are_never_specialized_on_their_value():
    """A seed (or stream, or offset) of 1 or a multiple of 16 compiles no variant of its own:
    the kernels mark these ints ``do_not_specialize`` (the JIT makes a 1 a constexpr and marks
    multiples of 16 divisible otherwise), and the compile check promises nothing about them."""
    for arg, found in _rng_binding().items():
        for value, (ty, attribute) in found["binder"].items():
            assert ty != "constexpr" and attribute is None, (arg, value, ty, attribute)
        assert not found["divisible"], arg


def test_random_stream_ints_bind_to_the_one_compiled_type():
    """Every value in an int's range binds to the one type the compile check (and so the SASS
    audit) compiles: one kernel per specialization, whatever the seed."""
    for arg, found in _rng_binding().items():
        types = {ty for ty, _ in found["binder"].values()}
        assert types == set(found["compiled"]) == {"i64"}, (arg, found)
