"""How a run computes: bfloat16 autocast or float32, and the tensors' memory layout.

On the project's 2-core EPYC (``avx512_bf16``) a Lite2 training step of the shipped recipe is
about 2.5x faster with bfloat16 autocast and channels-last tensors than in float32 NCHW
(``benchmarks/train_speed.py``). Weights and optimiser state stay float32 either way (autocast
only lowers the matrix work), and out-of-fold predictions are always made in float32, so a
ledger's probabilities do not depend on the precision a model was trained in beyond the
training itself.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX).

    Without it autocast still works but emulates bfloat16 and is slower than float32.
    """
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            flags = _cpu_flags()
            # oneDNN says yes on any AVX512 core; native bf16 dot products need these flags
            return not flags or bool(flags & {"avx512_bf16", "amx_bf16"})
    except (AttributeError, RuntimeError):
        pass
    return False


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` on CUDA and on a CPU with native bfloat16, else ``fp32``.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: str, bf16: bool):
    """bfloat16 autocast on the device's type, or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A (B, 3, H, W) batch in the layout the model's weights are in."""
    return images.contiguous(memory_format=memory_format(channels_last))
