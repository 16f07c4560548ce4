"""Cross-process batch norm for every device (spec ``kmax_deeplab.md`` §7.1).

kMaX needs batch statistics over the *global* batch. :class:`torch.nn.SyncBatchNorm`
does this on CUDA only (its forward and DDP both refuse CPU tensors), so multi-process
CPU runs (gloo; tests, small machines) use :class:`GlooSyncBatchNorm` here: per-channel
sum, sum of squares and count are all-reduced with the differentiable
``torch.distributed.nn.functional.all_reduce``, so gradients flow through the global
statistics exactly as in ``nn.SyncBatchNorm``. :func:`convert_sync_batchnorm` picks the
CUDA layer on GPUs and this one elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span all ranks; any input ``[B, C, *]``.

    Statistics are computed in fp32 (an fp32 island under autocast); the output has the
    input dtype. In eval mode, or without a process group, it is plain batch norm.
    Running variance uses the unbiased global estimate, like PyTorch's batch norms.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlooSyncBatchNorm expects [B, C, *] input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.full((1,), x.numel() / c, dtype=torch.float32, device=x.device)
        # [C] sums, [C] sums of squares, [1] count -> one all-reduce of [2C+1]
        total = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(unbiased.detach() * m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape).float() + self.bias.view(shape).float()
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cuda") -> nn.Module:
    """Replace every batch norm of ``module`` by a synchronised one, keeping its tensors.

    The package's one such function (the trainer calls it under DDP; it used to have a
    kMaX-only twin). State-dict keys are unchanged.

    Args:
        module: the model (modified in place where possible and returned).
        device_type: ``"cuda"`` (default) -> :class:`torch.nn.SyncBatchNorm`; anything else ->
            :class:`GlooSyncBatchNorm`.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device_type))
    return out
