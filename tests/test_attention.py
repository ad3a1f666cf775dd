"""Every attention variant: one contract, a forward/backward test, and oracles for ACLA's aggregation."""
import pytest
import torch

from search_space.acla import ACLA
from search_space.attention import NonLocal, make_attention
from search_space.registry import ATTENTION_KINDS
from tests.oracles import naive_cross_layer_attention

VARIANTS = [(kind, None) for kind in ATTENTION_KINDS] + [("acla", (2, 1, 3)), ("acla-shared", (2, 1, 3))]
KEYED = [(kind, caps) for kind, caps in VARIANTS if kind in ("acla", "cla", "acla-shared", "cla-shared")]


def make(kind, active_keys, channels=4, num_refs=3, keys=3):
    return make_attention(kind, channels=channels, num_refs=num_refs, keys_per_ref=keys, active_keys=active_keys)


def inputs(channels=4, num_refs=3, size=(5, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, *size, generator=gen)
    refs = tuple(torch.randn(2, channels, *size, generator=gen) for _ in range(num_refs))
    return x, refs


@pytest.mark.parametrize("kind,active_keys", VARIANTS)
def test_nearly_identity_at_init(kind, active_keys):
    """A new module moves its input by under 1% (the non-local block and 'none' by nothing)."""
    torch.manual_seed(0)
    module = make(kind, active_keys).eval()
    x, refs = inputs()
    change = (module(x, refs) - x).norm() / x.norm()
    assert change < 0.01
    if kind in ("nonlocal", "none"):
        assert change == 0


@pytest.mark.parametrize("kind,active_keys", KEYED)
def test_every_parameter_learns_from_the_first_step(kind, active_keys):
    """At insertion, as built (no re-initialisation), every parameter gets a nonzero gradient (the method audit
    found only the fusion did, while it started at zero)."""
    torch.manual_seed(0)
    module = make(kind, active_keys).train()
    x, refs = inputs()
    target = torch.randn_like(x)
    torch.nn.functional.l1_loss(module(x, refs), target).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,active_keys", VARIANTS)
def test_forward_backward(kind, active_keys):
    torch.manual_seed(0)
    module = make(kind, active_keys).train()
    for p in module.parameters():  # leave the identity initialisation so every parameter gets a gradient
        torch.nn.init.normal_(p, std=0.3)
    x, refs = inputs()
    x.requires_grad_(True)
    out = module(x, refs)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _acla_oracle(module, x, refs, gates):
    batch, _, height, width = x.shape
    layers, keys = module.num_refs, module.keys_per_ref
    with torch.no_grad():
        offsets = module.offset_proj(x).view(batch, layers, keys, 2, height, width).permute(0, 1, 2, 4, 5, 3)
        logits = module.logit_proj(x).view(batch, layers, keys, height, width)
        values = list(refs) if module.shared_values else [proj(r) for proj, r in zip(module.value_projs, refs)]
        out = naive_cross_layer_attention([v.double() for v in values], offsets.double(), logits.double(), gates)
        return x.double() + module.fuse(out.float()).double()


def _randomise(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        module.offset_proj.bias.mul_(4)  # offsets of a few pixels, many leaving the image


@pytest.mark.parametrize("shared", [False, True])
def test_cla_matches_naive_oracle(shared):
    module = ACLA(4, 2, 3, adaptive=False, shared_values=shared).eval()
    _randomise(module)
    x, refs = inputs(num_refs=2)
    gates = torch.ones(2, 2, 3, 5, 6)
    torch.testing.assert_close(module(x, refs).double(), _acla_oracle(module, x, refs, gates), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_adaptive_gates_drop_keys_from_softmax(shared):
    module = ACLA(4, 2, 3, adaptive=True, shared_values=shared).eval()
    _randomise(module)
    x, refs = inputs(num_refs=2)
    with torch.no_grad():
        gate_logits = module.gate_proj(x).view(2, 2, 3, 5, 6)
    gates = (gate_logits > 0).double()
    assert 0 < gates.mean() < 1  # some keys on, some off: the case that matters
    torch.testing.assert_close(module(x, refs).double(), _acla_oracle(module, x, refs, gates), rtol=1e-4, atol=1e-4)
    assert module.last_active_keys.shape == (2,)
    torch.testing.assert_close(module.last_active_keys.double(), gates.sum(2).mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_derived_keeps_each_querys_gated_on_keys_up_to_the_cap(shared):
    module = ACLA(4, 2, 3, adaptive=True, active_keys=(1, 2), shared_values=shared).eval()
    _randomise(module, seed=2)
    x, refs = inputs(num_refs=2, seed=4)
    with torch.no_grad():
        scores = module.gate_proj(x).view(2, 2, 3, 5, 6)
    gates = torch.zeros_like(scores, dtype=torch.float64)
    for b in range(2):  # a naive loop: per query and layer, its keys with score > 0, highest first, at most the cap
        for layer, cap in enumerate((1, 2)):
            for i in range(5):
                for j in range(6):
                    order = sorted(range(3), key=lambda k: -float(scores[b, layer, k, i, j]))
                    kept = [k for k in order if scores[b, layer, k, i, j] > 0][:cap]
                    gates[b, layer, kept, i, j] = 1.0
    counts = gates.sum(dim=2)  # (B, L, H, W): the count varies from query to query
    assert counts[:, 1].unique().numel() > 1
    torch.testing.assert_close(module(x, refs).double(), _acla_oracle(module, x, refs, gates), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(module.last_active_keys.double(), counts.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert all(k <= cap for k, cap in zip(module.key_quantiles(), (1, 2)))


def test_training_gates_are_binary_with_straight_through_gradient():
    torch.manual_seed(0)
    module = ACLA(4, 2, 3, adaptive=True).train()
    x, refs = inputs(num_refs=2)
    gates = module._sample_gates(module.gate_proj(x).permute(0, 2, 3, 1))  # the scores, channels-last
    assert gates.shape == (2, 5, 6, 6) and set(gates.detach().unique().tolist()) <= {0.0, 1.0}
    gates.sum().backward()
    assert module.gate_proj.weight.grad.abs().sum() > 0
    expected = module.last_expected_keys
    assert expected.shape == (2,) and expected.requires_grad


def test_nonlocal_matches_explicit_softmax():
    torch.manual_seed(0)
    module = NonLocal(4).eval()
    torch.nn.init.normal_(module.out.weight)
    x, _ = inputs(size=(3, 4))
    with torch.no_grad():
        theta = module.theta(x).flatten(2)  # (B, C', N)
        phi = module.phi(x).flatten(2)
        g = module.g(x).flatten(2)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N), unscaled: embedded Gaussian
        y = (attn @ g.transpose(1, 2)).transpose(1, 2).reshape(2, module.inner, 3, 4)
        want = x + module.out(y)
    torch.testing.assert_close(module(x), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_attention("transformer", channels=4, num_refs=1, keys_per_ref=1)
    with pytest.raises(ValueError):
        ACLA(4, 2, 3, active_keys=(4, 1))
    with pytest.raises(ValueError):
        ACLA(4, 2, 3)(torch.zeros(1, 4, 3, 3), (torch.zeros(1, 4, 3, 3),))
