"""triton_adam: PaddlePaddle's Adam/AdamW as fused Triton kernels, on PyTorch tensors.

Two faces on one engine: ``triton_adam.Adam``/``AdamW`` take Paddle's API (and state format);
``triton_adam.optim.Adam``/``AdamW`` are ``torch.optim.Optimizer`` subclasses with PyTorch's
API, math and state format.

Importing this package imports triton but never touches the CUDA driver. Kernels run compiled
on CUDA tensors, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set
before triton is imported).
"""

from triton_adam import lr, optim
from triton_adam.clip import ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue
from triton_adam.io import load, save
from triton_adam.optimizer import Adam, AdamW
from triton_adam.param_attr import param_name, set_param_attr
from triton_adam.regularizer import L1Decay, L2Decay
from triton_adam.state import MissingStateError, StateDictError, StateDictTypeError

__all__ = ["Adam", "AdamW", "ClipGradByGlobalNorm", "ClipGradByNorm", "ClipGradByValue",
           "L1Decay", "L2Decay", "MissingStateError", "StateDictError", "StateDictTypeError",
           "load", "lr", "optim", "param_name", "save", "set_param_attr"]
__version__ = "0.1.0"
