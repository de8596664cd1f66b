"""Gradient compressors for horovod.torch: ``COMPRESSORS[options.compression]``.

Horovod's ``Compression.fp16`` allocates a float16 tensor in ``compress`` and a float32 one in
``decompress``, every call; a large CPU tensor comes from a fresh ``mmap``, so each allocation
pays a page fault per 4 KB page (64 MB of gradients: 50 ms to cast into a new float16 tensor vs 18
ms into a reused one, 62 ms into a new float32 tensor vs 25 ms back into the gradient, one core;
BENCHMARKS.md, "fp16 at the link"). ``FP16Compressor`` casts into a float16 buffer taken from a
pool and decompresses into the tensor it came from: the same values as Horovod's, bit for bit, and
no allocation once every buffer size has been seen.
"""

from __future__ import annotations

from collections import defaultdict

import horovod.torch as hvd
import torch
from horovod.torch.compression import Compressor

from ..core.options import Compression

_Key = tuple[int, torch.device]


class FP16Compressor(Compressor):
    """Float16 on the wire, gradients decompressed in place.

    ``compress`` casts a floating-point tensor into a float16 buffer of its number of values;
    ``decompress`` casts the reduced buffer back into the original tensor and returns that tensor
    (``p.grad.set_`` on it is then a no-op: the gradient keeps its storage). A result of another
    shape than the input (a reduce-scatter's shard) is returned as a new tensor of the input's
    dtype. Each buffer goes back to the pool in ``decompress``, so the pool holds at most as many
    buffers of a size as were in flight at once (one per gradient of that size in a step).
    Tensors that are not floating point, or already float16, pass through unchanged, as in
    Horovod's ``FP16Compressor``.
    """

    def __init__(self) -> None:
        self._free: defaultdict[_Key, list[torch.Tensor]] = defaultdict(list)

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, object]:
        if not tensor.dtype.is_floating_point or tensor.dtype == torch.float16:
            return tensor, None
        try:
            buffer = self._free[tensor.numel(), tensor.device].pop()
        except IndexError:
            buffer = torch.empty(tensor.numel(), dtype=torch.float16, device=tensor.device)
        return buffer.view(tensor.shape).copy_(tensor), (tensor, buffer)

    def decompress(self, tensor: torch.Tensor, ctx: object) -> torch.Tensor:
        if ctx is None:
            return tensor
        original, buffer = ctx
        if tensor.shape == original.shape:
            result = original.copy_(tensor)
        else:
            result = tensor.to(original.dtype)
        self._free[(buffer.numel(), buffer.device)].append(buffer)
        return result


COMPRESSORS: dict[Compression, Compressor] = {
    Compression.NONE: hvd.Compression.none,
    Compression.FP16: FP16Compressor(),
}
