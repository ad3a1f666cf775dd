"""Analytic MACs against torch's FlopCounterMode (an independent count: 1 MAC = 2 FLOPs there)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space.backbone import build_network
from search_space.cost import genotype_macs, reference_input_size
from search_space.genotype import Genotype, refs_at_position

TASKS = [("sr", 2, 3), ("sr", 3, 3), ("sr", 4, 3), ("denoise", 1, 3), ("car", 1, 1), ("car", 1, 3), ("demosaic", 1, 3)]


def counted_macs(network, size, in_channels):
    with FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, in_channels, *size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("task,scale,in_channels", TASKS)
@pytest.mark.parametrize("size", [(7, 9), (12, 10)])
def test_plain_backbone_equals_flop_counter(task, scale, in_channels, size):
    genotype = Genotype(task=task, scale=scale, in_channels=in_channels, channels=6, blocks=4, stages=2)
    assert genotype_macs(genotype, size) == counted_macs(build_network(genotype), size, in_channels)


@pytest.mark.parametrize("adaptive", [True, False])
def test_acla_convs_counted_and_sampling_by_formula(adaptive):
    # FlopCounterMode sees the 1x1 convs and the merging products but not the sampling; the difference must be
    # exactly the formula's 4 * C MACs per active key and pixel (4 bilinear taps over the C channels).
    keys = ((2,), (3,), (1, 4), (4, 4)) if adaptive else ((4,), (4,), (4, 4), (4, 4))
    genotype = Genotype(task="denoise", scale=1, in_channels=3, channels=6, blocks=4, stages=2,
                        attention="acla" if adaptive else "cla", max_keys=4, adaptive=adaptive,
                        positions=(0, 1, 2, 3), keys=keys)
    size = (5, 7)
    sampling = 4 * 6 * sum(sum(k) for k in keys) * size[0] * size[1]
    assert genotype_macs(genotype, size) - counted_macs(build_network(genotype).eval(), size, 3) == sampling


@pytest.mark.parametrize("size", [(6, 5), (20, 17), (33, 8)])  # keys pooled to 16 x 16 above the grid
def test_nonlocal_macs_equal_flop_counter(size):
    genotype = Genotype(task="denoise", scale=1, in_channels=3, channels=8, blocks=2, stages=1,
                        attention="nonlocal", positions=(1,))
    # In NCHW the SDPA call takes the math path, which FlopCounterMode counts; channels-last (the network's own
    # layout) takes torch's fused CPU kernel, which it does not.
    network = build_network(genotype).to(memory_format=torch.contiguous_format)
    assert genotype_macs(genotype, size) == counted_macs(network, size, 3)


def test_pooled_nonlocal_fits_a_budget_at_256():
    bare = Genotype(task="car", scale=1, in_channels=3, channels=32, blocks=8, stages=4)
    one = Genotype.from_dict({**bare.to_dict(), "attention": "nonlocal", "positions": [3]})
    assert genotype_macs(one) - genotype_macs(bare) < 0.1 * genotype_macs(bare)


def test_reference_sizes_follow_the_field():
    assert reference_input_size("sr", 2) == (360, 640)
    assert reference_input_size("sr", 3) == (240, 426)
    assert reference_input_size("sr", 4) == (180, 320)
    assert reference_input_size("car", 1) == (256, 256)
    # EDSR-baseline x2 (64 channels, 16 blocks) is quoted at about 316G mult-adds for a 1280x720 output
    edsr_baseline = Genotype(task="sr", scale=2, in_channels=3, channels=64, blocks=16, stages=4)
    assert 300e9 < genotype_macs(edsr_baseline) < 330e9


def test_refs_per_position():
    assert [refs_at_position(p, 16, 4) for p in (0, 3, 4, 15)] == [1, 1, 2, 4]
