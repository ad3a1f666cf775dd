"""ACLA's attention op, as Deformable-DETR keeps `models/ops`: the fused CPU kernel and its build
(`acla_attend.py`, `csrc/`), and the pure-torch reference it must match (`reference.py`)."""
from .acla_attend import attend, cpu_kernel_available, load_extension, top_k_mask, use_reference
from .reference import masked_softmax, reference_attend

__all__ = ["attend", "cpu_kernel_available", "load_extension", "masked_softmax", "reference_attend", "top_k_mask",
           "use_reference"]
