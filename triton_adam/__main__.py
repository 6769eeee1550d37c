"""``python -m triton_adam`` (also the ``triton-adam`` command): the built-in demo.

On a machine without CUDA the kernels run on the CPU under the Triton interpreter. Triton
chooses interpretation when kernels are defined, and importing this package already defined
them, so the demo restarts itself once with ``TRITON_INTERPRET=1`` set.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import torch

    from triton_adam import backend, demo

    args = demo.build_parser().parse_args(argv)
    wants_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if not wants_cuda and not backend.interpreting():
        if os.environ.get("TRITON_INTERPRET") == "1":  # set, yet not in effect: do not loop
            print("error: TRITON_INTERPRET=1 did not take effect", file=sys.stderr)
            return 2
        print("No CUDA device: running the Triton kernels under the interpreter "
              "(TRITON_INTERPRET=1).", flush=True)
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, "-m", "triton_adam", *(sys.argv[1:] if argv is None else argv)]
        os.execve(sys.executable, cmd, env)
    device = torch.device("cuda" if wants_cuda else "cpu")
    rows = demo.run(args, device)
    print()
    print(demo.format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
