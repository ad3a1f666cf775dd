"""ACLA's attention op, as Deformable-DETR keeps `models/ops`: the dispatcher and the fused CPU kernel
(`acla_attend.py`, `csrc/`), the Triton kernels for CUDA (`triton_attend.py`, imported only when used), and the
pure-torch reference they must match (`reference.py`)."""
from .acla_attend import (BACKENDS, attend, attention_backend, cpu_kernel_available, load_extension, top_k_mask,
                          triton_module, use_backend, use_reference)
from .reference import masked_softmax, reference_attend

__all__ = ["BACKENDS", "attend", "attention_backend", "cpu_kernel_available", "load_extension", "masked_softmax",
           "reference_attend", "top_k_mask", "triton_module", "use_backend", "use_reference"]
