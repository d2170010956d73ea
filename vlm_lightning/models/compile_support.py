"""Whether this platform can ``torch.compile`` the model's layers: asked once, before the model loads."""

from __future__ import annotations

import torch
import torch._dynamo
import torch.utils._triton
from torch._inductor import cpp_builder


def compile_problem(cuda: bool) -> str | None:
    """Why regional compilation cannot run here (``None``: it can). ``cuda``: the layers run on CUDA, where
    inductor generates Triton kernels; on the CPU it builds C++ and needs a compiler."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python / platform (torch {torch.__version__})"
    if cuda and not torch.utils._triton.has_triton_package():  # no CUDA initialisation here
        return "torch.compile on CUDA needs Triton, which is not installed (`pip install triton`)"
    if not cuda:
        try:
            cpp_builder.get_cpp_compiler()
        except Exception as error:  # noqa: BLE001 - inductor raises several kinds when none is found
            return f"torch.compile on the CPU needs a C++ compiler (set CXX or install g++): {error}"
    return None


__all__ = ["compile_problem"]
