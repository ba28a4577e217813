"""The optimizers and learning-rate schedules a recipe can name, built in one place (`build_optimizer`,
`build_scheduler`): LAMB with NVIDIA FusedLAMB semantics and NVIDIA's poly warm-up schedule (BERT's recipe),
AdamW with a cosine schedule (decoders as fms-ehrs trains them), StableAdamW with a warmup-stable-decay
schedule (ModernBERT's published recipes). Every optimizer clips the global gradient norm itself (LAMB does it
before its moments, as apex does), so the engine's step is the same for all.

Why our own LAMB: apex's FusedLAMB and DeepSpeed's FusedLamb are CUDA-only, and the LAMB in
torch-optimizer (`torch_optimizer.Lamb`) differs from NVIDIA's (no global gradient clipping
before the moments, trust ratio clamped, per-parameter loops). This one follows apex's
`multi_tensor_lamb` step by step and uses `torch._foreach_*` ops, which run as fused multi-tensor
kernels on CUDA and as one C++ loop per op on CPU.

Under ZeRO across ranks (DeepSpeed stage 1/2, several ranks) each rank's optimizer holds one partition of the
parameters and only that partition's gradients: the engine sets `optimizer.norm_group` to the data-parallel group, and
the global gradient norm is then all-reduced over it (`global_grad_norm`), so every rank clips by the norm of the whole
gradient, as one rank or DDP does.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ort_training.config import OPTIMIZERS, SCHEDULES


class Lamb(Optimizer):
    """LAMB as in NVIDIA's BERT recipe (apex FusedLAMB, `use_nvlamb=False`, `grad_averaging=True`).

    Per step: g <- g / max(1, ||g_global|| / max_grad_norm); m, v Adam moments with bias
    correction; u = m_hat / (sqrt(v_hat) + eps) + wd * w; w <- w - lr * r * u with trust ratio
    r = ||w|| / ||u|| (1 where either norm is 0). As in apex, the trust ratio is applied only to
    groups with weight decay (biases and LayerNorm keep r = 1) unless `use_nvlamb=True`.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0, use_nvlamb=False):
        if lr < 0 or eps < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.max_grad_norm = max_grad_norm
        self.use_nvlamb = use_nvlamb
        self.norm_group = None  # ZeRO across ranks: the group the gradient norm is all-reduced over (module docstring)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        all_grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not all_grads and self.norm_group is None:  # with a norm group every rank must join the all-reduce
            return loss
        if any(g.is_sparse for g in all_grads):
            raise RuntimeError("Lamb does not support sparse gradients")
        # Global norm over every parameter (all groups; with ZeRO, all ranks' partitions), computed in fp32 like apex.
        global_norm = global_grad_norm(all_grads, self.norm_group)
        if self.max_grad_norm > 0:
            clip = torch.clamp(global_norm / self.max_grad_norm, min=1.0)
        else:
            clip = torch.ones_like(global_norm)

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            exp_avgs, exp_avg_sqs = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            step = int(self.state[params[0]]["step"].item())
            grads = torch._foreach_div([p.grad for p in params], clip)

            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = b1*m + (1-b1)*g
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            denom = torch._foreach_sqrt(torch._foreach_div(exp_avg_sqs, bc2))
            torch._foreach_add_(denom, eps)
            updates = torch._foreach_div(torch._foreach_div(exp_avgs, bc1), denom)
            if wd != 0:
                torch._foreach_add_(updates, params, alpha=wd)
            if wd != 0 or self.use_nvlamb:
                w_norms = torch._foreach_norm(params)
                u_norms = torch._foreach_norm(updates)
                ratios = [torch.where((w > 0) & (u > 0), w / u, torch.ones_like(w)) for w, u in zip(w_norms, u_norms)]
                torch._foreach_mul_(updates, ratios)
            torch._foreach_add_(params, updates, alpha=-lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: in BERT the 1-D parameters are exactly the biases and LayerNorm weights
    that NVIDIA's no_decay name list excludes (embeddings are matrices and decayed there too)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def global_grad_norm(grads: list[torch.Tensor], group=None) -> torch.Tensor:
    """The L2 norm of `grads` together, in fp32. With `group` (ZeRO: each rank holds a disjoint partition of the
    gradients) the squared local norms are summed over the group's ranks first, so every rank gets the same norm of
    the whole gradient; a rank with no gradients still joins the all-reduce."""
    if group is None:
        return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
    if grads:
        squared = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)])).square()
    else:
        squared = torch.zeros((), dtype=torch.float32)
    dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=group)
    return squared.sqrt()


def clip_global_norm_(params: list[torch.Tensor], max_norm: float, group=None) -> None:
    """Scale the gradients of `params` so their global L2 norm is at most `max_norm` (0: no clip); the norm is
    all-reduced over `group` when it is given (ZeRO across ranks, `global_grad_norm`)."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0 and (grads or group is not None):
        norm = global_grad_norm(grads, group)
        if grads:
            torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class AdamW(torch.optim.AdamW):
    """torch's AdamW (decoupled weight decay), with the global gradient-norm clip applied first."""

    def __init__(self, params, max_grad_norm: float = 1.0, **kwargs):
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.norm_group = None  # ZeRO across ranks (module docstring)

    @torch.no_grad()
    def step(self, closure=None):
        clip_global_norm_([p for g in self.param_groups for p in g["params"]], self.max_grad_norm, self.norm_group)
        return super().step(closure)


class _PerTensorAdam(Optimizer):
    """What StableAdamW and AdamWScale share: the global gradient-norm clip (all-reduced under ZeRO), then per tensor
    Adam's moments; each subclass turns them into the tensor's update (`_apply`)."""

    def __init__(self, params, defaults: dict, max_grad_norm: float):
        lr, eps, betas = defaults["lr"], defaults["eps"], defaults["betas"]
        if lr < 0 or eps < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"invalid {type(self).__name__} hyper-parameters lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {**defaults, "betas": tuple(betas)})
        self.max_grad_norm = max_grad_norm
        self.norm_group = None  # ZeRO across ranks (module docstring)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip_global_norm_([p for g in self.param_groups for p in g["params"]], self.max_grad_norm, self.norm_group)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                self._apply(p, m, v, float(state["step"]), group)
        return loss

    def _apply(self, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: float, group: dict) -> None:
        raise NotImplementedError


class StableAdamW(_PerTensorAdam):
    """AdamW with update clipping (Wortsman et al. 2023, "Stable and low-precision training for large-scale
    vision-language models"; the optimizer of ModernBERT's published recipes): each tensor's step size is divided by
    max(1, RMS(g^2 / v)), so a gradient far larger than its running second moment cannot blow a weight up. Written
    here because no dependency of the bundle ships it (torch-optimi does; one small class is not worth a package)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), max_grad_norm)

    def _apply(self, p, m, v, step, group):
        beta1, beta2 = group["betas"]
        v_hat = v / (1 - beta2**step)
        rms = torch.sqrt(torch.mean(p.grad * p.grad / torch.clamp(v_hat, min=group["eps"] ** 2)))
        lr = group["lr"] / torch.clamp(rms, min=1.0)
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(-lr * (m / (1 - beta1**step)) / (v_hat.sqrt() + group["eps"]))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                    kind: str = "lamb") -> Optimizer:
    """The recipe's optimizer over `model`'s parameters, weight decay on matrices only (`param_groups`)."""
    groups = param_groups(model, weight_decay)
    if kind == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    if kind == "adamw":  # fms-ehrs's (HF Trainer) defaults: betas (0.9, 0.999), eps 1e-8
        return AdamW(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm, betas=(0.9, 0.999), eps=1e-8)
    if kind == "stable_adamw":  # ModernBERT's yamls: betas (0.9, 0.98), eps 1e-6
        return StableAdamW(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    if kind == "adamwscale":  # nanoT5's / DEPTH's T5 pretraining: betas (0.9, 0.999), eps 1e-8
        return AdamWScale(groups, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    raise ValueError(f"optimizer {kind!r}: choose one of {OPTIMIZERS}")


class AdamWScale(_PerTensorAdam):
    """AdamW with parameter-scale learning rates (Adafactor's `scale_parameter`, as nanoT5's and DEPTH's AdamWScale
    use it for T5): each tensor's step is multiplied by max(eps_scale, RMS(w)), so a tensor's update is relative to
    its size, and weight decay is decoupled (w -= lr * wd * w). Written from the description, not copied: Adam
    moments with bias correction, then the RMS scale, with the global gradient-norm clip first as every optimizer
    here."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=1.0,
                 eps_scale=1e-3):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, eps_scale=eps_scale), max_grad_norm)

    @staticmethod
    def rms(t: torch.Tensor) -> torch.Tensor:
        return t.norm(2) / (t.numel() ** 0.5)

    def _apply(self, p, m, v, step, group):
        beta1, beta2 = group["betas"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        update = m / (v.sqrt() + group["eps"])
        update.mul_(self.rms(p).clamp(min=group["eps_scale"]))  # the parameter scale
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def poly_warmup(progress: float, warmup: float, degree: float = 0.5) -> float:
    """NVIDIA's PolyWarmUpScheduler multiplier at `progress` = step / total_steps."""
    if progress < warmup:
        return progress / warmup
    return max(1.0 - progress, 0.0) ** degree


def cosine_warmup(progress: float, warmup: float) -> float:
    """Linear warm-up, then a half cosine from 1 to 0 (HF's get_cosine_schedule_with_warmup)."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min((progress - warmup) / max(1.0 - warmup, 1e-12), 1.0)))


def warmup_stable_decay(progress: float, warmup: float, decay: float = 0.1) -> float:
    """Linear warm-up, a constant learning rate, then a linear decay to 0 over the last `decay` of the steps
    (ModernBERT's trapezoidal schedule)."""
    if progress < warmup:
        return progress / warmup
    return min(1.0, max(1.0 - progress, 0.0) / decay)


def build_scheduler(optimizer: Optimizer, warmup_proportion: float, total_steps: int, degree: float = 0.5,
                    kind: str = "poly") -> LambdaLR:
    """Optimizer step k (from 0) uses progress (k+1)/total: NVIDIA advances its scheduler before each
    optimizer step, so the first update already has a non-zero learning rate (kept for every schedule)."""
    if kind == "cosine":
        return LambdaLR(optimizer, lambda k: cosine_warmup((k + 1) / total_steps, warmup_proportion))
    if kind == "wsd":
        return LambdaLR(optimizer, lambda k: warmup_stable_decay((k + 1) / total_steps, warmup_proportion))
    if kind != "poly":
        raise ValueError(f"schedule {kind!r}: choose one of {SCHEDULES}")
    return LambdaLR(optimizer, lambda k: poly_warmup((k + 1) / total_steps, warmup_proportion, degree))
