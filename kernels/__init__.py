"""Triton kernels of triton_adam (installed as ``triton_adam.kernels``).

Only kernels and their launchers live here: no optimizer logic, no state naming.
"""
