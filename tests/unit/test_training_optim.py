"""LAMB against a plain per-parameter reference, and NVIDIA's poly warm-up schedule."""

import copy
import math

import pytest
import torch

from ort_training.loop.optim import Lamb, build_scheduler, param_groups, poly_warmup


def reference_lamb_step(params, grads, states, lr, wd_per_param, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0):
    """apex multi_tensor_lamb written out one parameter at a time, in float64."""
    global_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    clip = max(global_norm / max_grad_norm, 1.0)
    out = []
    for p, g, st, wd in zip(params, grads, states, wd_per_param):
        p, g = p.double(), g.double() / clip
        st["t"] += 1
        st["m"] = betas[0] * st["m"] + (1 - betas[0]) * g
        st["v"] = betas[1] * st["v"] + (1 - betas[1]) * g * g
        m_hat = st["m"] / (1 - betas[0] ** st["t"])
        v_hat = st["v"] / (1 - betas[1] ** st["t"])
        u = m_hat / (v_hat.sqrt() + eps) + wd * p
        ratio = 1.0
        if wd != 0:
            w_norm, u_norm = float(p.norm()), float(u.norm())
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        out.append(p - lr * ratio * u)
    return out


def test_lamb_matches_per_parameter_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[2].weight.zero_()  # ||w|| = 0 -> trust ratio 1
    groups = param_groups(model, 0.01)
    # Rename-free check of the decay rule: LayerNorm and biases excluded.
    names = dict((id(p), n) for n, p in model.named_parameters())
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["0.bias", "1.bias", "1.weight", "2.bias"]
    assert sorted(names[id(p)] for p in groups[0]["params"]) == ["0.weight", "2.weight"]
    opt = Lamb(groups, lr=0.05, weight_decay=0.01, max_grad_norm=1.0)
    params = [p for g in groups for p in g["params"]]
    wds = [g["weight_decay"] for g in groups for _ in g["params"]]
    ref = [p.detach().double().clone() for p in params]
    states = [{"t": 0, "m": torch.zeros_like(r), "v": torch.zeros_like(r)} for r in ref]
    for step in range(4):
        scale = 10.0 if step % 2 == 0 else 0.01  # alternate: clipping active / inactive
        grads = [torch.randn_like(p) * scale for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref = reference_lamb_step(ref, grads, states, 0.05, wds)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_lamb_state_roundtrip_gives_identical_steps():
    torch.manual_seed(1)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    oa = Lamb(param_groups(a, 0.01), lr=0.1)
    grads = [torch.randn(4, 4), torch.randn(4)]
    a.weight.grad, a.bias.grad = grads
    oa.step()
    ob = Lamb(param_groups(b, 0.01), lr=0.1)
    b.load_state_dict(a.state_dict())
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as after torch.load: no shared tensors
    for m, o in ((a, oa), (b, ob)):
        m.weight.grad, m.bias.grad = grads[1].expand(4, 4).clone(), grads[0][0].clone()
        o.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_poly_warmup_values():
    assert poly_warmup(0.05, 0.1) == pytest.approx(0.5)
    assert poly_warmup(0.1, 0.1) == pytest.approx(math.sqrt(0.9))
    assert poly_warmup(0.75, 0.1) == pytest.approx(0.5)
    assert poly_warmup(1.0, 0.1) == 0.0
    assert poly_warmup(1.5, 0.1) == 0.0


def test_scheduler_follows_nvidia_order():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, warmup_proportion=0.25, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * poly_warmup((k + 1) / 8, 0.25) for k in range(8)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(2.0 * math.sqrt(0.75)) and lrs[-1] == 0.0
