"""Triton kernels of triton_adam (installed as ``triton_adam.kernels``).

Only kernels and their launchers live here: no optimizer logic, no state naming.

* ``common``: what every kernel module shares: the device guard and uploads, the launch
  configuration, dtype maps, the table layouts (``HYPER_*``, ``POW_*``, ``COL_*``,
  ``CHUNK_*``, ``TABLE_WIDTH``, ``STATE_ALIGN``) with their constexpr mirrors, and the IEEE /
  rounding device helpers (``sqrt_rn``, ``div_rn``, ``round_to``), and the split of an fp32
  master into a bf16 param and an int16 remainder (``split_master`` / ``join_master``, host
  twins ``*_host``);
* ``update``: the Adam step as device functions (per-program scalars, the gradient's AMP and
  clip transform, the math, the pow advance), shared by the update kernels;
* ``adam``: the dense and multi-tensor update kernels (re-exports the layout names);
* ``lazy``: sparse-row gradients: the lazy update, the densified gradient, the sparse sum of
  squares of a norm clip;
* ``norm``: the clipping norms (sum-of-squares pass, finalize).

No module imports another's private (underscore) names.
"""
