"""Every registered attention kind on every registered task: it builds, it costs what its formula says, and it
searches within a budget. A new entry in search_space/registry.py is covered here without a new test."""
import pytest
import torch

from search_space.backbone import build_network
from search_space.cost import attention_macs, backbone_macs, genotype_macs, reference_input_size
from search_space.genotype import Genotype, refs_at_position
from search_space.registry import ATTENTION, SEARCHABLE_KINDS, TASK_NAMES, TASKS
from search_space.search import search_architecture
from search_space.supernet import Supernet
from workers.tasks import task_from_options

CASES = [(kind, task) for kind in SEARCHABLE_KINDS for task in TASK_NAMES]


def _base(kind: str, task: str) -> Genotype:
    spec = task_from_options(task)
    return Genotype(task=task, scale=spec.scale, in_channels=spec.in_channels, channels=8, blocks=4, stages=2,
                    attention=kind, max_keys=2, adaptive=ATTENTION[kind].adaptive)


def _with_one_module(base: Genotype, position: int) -> Genotype:
    refs = refs_at_position(position, base.blocks, base.stages)
    return base.replace(positions=[position], keys=[[base.max_keys] * refs] if base.uses_keys else [])


def _batches(base: Genotype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        clean = torch.rand(2, base.in_channels, 8 * base.scale, 8 * base.scale, generator=gen)
        degraded = torch.nn.functional.avg_pool2d(clean, base.scale) if base.scale > 1 else clean
        yield degraded + 0.05 * torch.randn(degraded.shape, generator=gen), clean


@pytest.mark.parametrize("kind,task", CASES)
def test_every_kind_builds_costs_and_searches_on_every_task(kind, task):
    torch.manual_seed(0)
    base = _base(kind, task)
    one = _with_one_module(base, 0)  # one reference layer: the cheapest module
    out = build_network(one)(torch.rand(1, base.in_channels, 8, 8))
    assert out.shape == (1, base.in_channels, 8 * base.scale, 8 * base.scale)

    # cost: the bare backbone by its own formula, plus the kind's module by the registry's formula
    height, width = reference_input_size(task, base.scale)
    bare = backbone_macs(scale=base.scale, in_channels=base.in_channels, channels=8, blocks=4, height=height, width=width)
    module = attention_macs(kind=kind, channels=8, num_refs=1, keys_per_ref=2, adaptive=base.adaptive,
                            active_keys=[2], height=height, width=width)
    assert genotype_macs(base.bare()) == bare and module > 0
    assert genotype_macs(one) == int(bare + module)

    budget = bare + 1.5 * module  # room for one module, not two
    outcome = search_architecture(supernet=Supernet(base=base, alpha_init=1.0), batches=_batches(base),
                                  budget_macs=budget, steps=4, arch_lr=0.05, warmup_steps=1, score_measurements=2)
    derived = Genotype.from_json(outcome.genotype.to_json())
    assert derived.attention == kind and derived.task == task
    assert genotype_macs(derived) <= budget and len(derived.positions) <= 1


def test_the_tables_hold_what_the_cli_and_the_cost_model_read():
    # independent of the table: the field's reference sizes (a 1280x720 SR output, 256x256 otherwise)
    assert reference_input_size("sr", 4) == (180, 320) and reference_input_size("car", 1) == (256, 256)
    assert {name: t.option.values if t.option else None for name, t in TASKS.items()} == {
        "sr": (2, 3, 4), "denoise": (15.0, 25.0, 50.0), "car": (10, 20, 30, 40), "demosaic": None}
    assert ATTENTION["none"].inserts is False and "none" not in SEARCHABLE_KINDS
    assert attention_macs(kind="none", channels=8, num_refs=1, keys_per_ref=2, adaptive=False, active_keys=[],
                          height=4, width=4) == 0


@pytest.mark.parametrize("argv,message", [
    (["--task", "car", "--sigma", "15"], "--sigma applies to denoise only, not car"),
    (["--task", "demosaic", "--quality", "20"], "--quality applies to car only, not demosaic"),
])
def test_another_tasks_option_is_refused(argv, message):
    from orchestrator.cli.main import OneLineParser, add_task_args
    from orchestrator.runtime.errors import UsageError
    from orchestrator.cli.local import task_spec_from_args
    parser = OneLineParser(prog="acla-orch cost")
    add_task_args(parser)
    with pytest.raises(UsageError, match=message):
        task_spec_from_args(parser.parse_args(argv))
