"""Float32 linear layers through oneDNN with their weights packed once, for the transformers engine on a CPU.

PyTorch computes ``nn.Linear`` on x86 CPUs with MKL, whose matrix products for a few rows (decoding: one row per
sequence in the batch) run several times slower on AMD processors than oneDNN's with weights laid out in advance
for it (a rank1-0.5b-shaped model writing 8 × 64 tokens: 94.5 s with MKL, 49.3 s packed; docs/benchmarks.md).
It is the same float32 arithmetic, summed in another order: results agree to float32 rounding. PyTorch's own
inductor uses these two operators for the same purpose.
"""

from __future__ import annotations

import torch


def available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear operators (x86 and Arm builds do)."""
    mkldnn = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(mkldnn, name) for name in ("_reorder_linear_weight", "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight packed for oneDNN."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach().float().contiguous(), None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().contiguous())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features).contiguous()
        outputs = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return outputs.reshape(*inputs.shape[:-1], self.out_features)


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Replace every float32 ``nn.Linear`` of ``model`` (on a CPU) by a ``PackedLinear``; returns how many. A tied
    output layer gets a packed copy of its own, beside the embedding that keeps the original. Layers in any other
    dtype stay as they are: ``PackedLinear`` computes in float32, and PyTorch already sends bf16 products (``auto``
    on a CPU with native bf16) to oneDNN."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.float32 \
                    and child.weight.device.type == "cpu":
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
