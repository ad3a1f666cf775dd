"""Mixed precision (search_space/precision.py): what `auto` picks, bf16 autocast in a training step with fp32
master weights, loss and global skip, fp32 checkpoints, and the CLI's handling of a precision that does not fit."""
import argparse
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from search_space import precision as precision_module
from search_space.backbone import build_network
from search_space.genotype import Genotype
from search_space.precision import autocast, resolve_precision, slow_bf16_warning
from workers.profiles import Profile, get_profile
from workers.train import make_optimizer, train_step

ACLA_NET = Genotype(task="car", scale=1, in_channels=3, channels=16, blocks=4, stages=2, attention="acla",
                    adaptive=True, max_keys=4, positions=(1, 3), keys=((3,), (3, 3)))
SR_NET = Genotype(task="sr", scale=2, in_channels=3, channels=16, blocks=4, stages=2, attention="cla", max_keys=4,
                  positions=(3,), keys=((4, 4),))


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend this CPU has the given bf16 flags."""
    def pretend(*flags):
        monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: tuple(flags))
    return pretend


def test_auto_is_bf16_only_where_the_cpu_has_bf16_in_hardware(cpu_flags):
    cpu_flags("avx512_bf16")
    assert resolve_precision("auto", "cpu") == "bf16"
    cpu_flags("amx_bf16")
    assert resolve_precision("auto", "cpu") == "bf16"
    cpu_flags()
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_bf16_on_a_cpu_without_it_goes_on_with_one_line(cpu_flags, capsys):
    from orchestrator.cli.local import precision_from_args
    cpu_flags()
    assert slow_bf16_warning("fp32", "cpu") is None
    assert precision_from_args(argparse.Namespace(precision="bf16")) == "bf16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16 is slow on this CPU" in err and "going on in bf16" in err
    cpu_flags("avx512_bf16")
    assert precision_from_args(argparse.Namespace(precision="bf16")) == "bf16"
    assert capsys.readouterr().err == ""


def test_a_profile_holds_a_resolved_precision_only():
    with pytest.raises(ValueError, match="expected fp32 or bf16"):
        dataclasses.replace(get_profile("smoke"), precision="auto")
    assert Profile.__dataclass_fields__["precision"].default == "fp32"  # what a search stored before it resumes in


@pytest.mark.parametrize("genotype", [ACLA_NET, SR_NET], ids=["car-acla", "sr-cla"])
def test_under_autocast_the_output_is_fp32_and_close_to_the_fp32_forward(genotype):
    torch.manual_seed(0)
    net = build_network(genotype).eval()
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        full = net(x)
        with autocast("bf16", "cpu"):
            mixed = net(x)
    assert mixed.dtype == torch.float32  # the tail comes back to fp32 before the global skip adds the input
    assert mixed.shape == full.shape
    # bf16 keeps 8 bits of mantissa: the restored image agrees to about 1% of its range
    torch.testing.assert_close(mixed, full, rtol=0, atol=0.03)


def test_a_bf16_step_trains_fp32_master_weights_and_every_parameter_learns():
    torch.manual_seed(0)
    net = build_network(ACLA_NET).train()
    optimizer, _ = make_optimizer(net, dataclasses.replace(get_profile("smoke"), precision="bf16"))
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    inputs, targets = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss = train_step(net, optimizer, inputs, targets, "bf16")
    assert isinstance(loss, float) and loss == loss
    for name, param in net.named_parameters():
        assert param.dtype == torch.float32, name
        assert not torch.equal(param.detach(), before[name]), f"{name} did not move"
    for state in optimizer.state.values():
        assert all(t.dtype == torch.float32 for t in state.values() if torch.is_tensor(t) and t.dim())


def test_the_loss_is_taken_in_fp32():
    net = build_network(ACLA_NET).train()
    seen = {}
    original = F.l1_loss

    def spy(output, target, *args, **kwargs):
        seen["dtype"] = output.dtype
        return original(output, target, *args, **kwargs)
    optimizer, _ = make_optimizer(net, get_profile("smoke"))
    F.l1_loss = spy
    try:
        train_step(net, optimizer, torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12), "bf16")
    finally:
        F.l1_loss = original
    assert seen["dtype"] == torch.float32


def test_training_in_bf16_writes_an_fp32_checkpoint_that_loads_and_runs_in_fp32(tmp_path):
    from workers.checkpoint import model_from_checkpoint
    from workers.data import DataSpec, embedded_sets
    from workers.tasks import task_from_options
    from workers.train import train
    task = task_from_options("car")
    profile = dataclasses.replace(get_profile("smoke"), precision="bf16")
    genotype = ACLA_NET.replace(channels=8)
    result = train(genotype=genotype, task=task, data=DataSpec(*embedded_sets()), profile=profile, steps=2,
                   checkpoint_path=str(tmp_path / "model.pt"))
    assert result.metrics["psnr_y"] > 0
    model, loaded, _, _ = model_from_checkpoint(str(tmp_path / "model.pt"))
    assert loaded == genotype
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert model(torch.rand(1, 3, 16, 16)).dtype == torch.float32


def test_resume_keeps_the_precision_a_search_started_with():
    from orchestrator.runtime.errors import UsageError
    from orchestrator.search.resume import check_precision
    check_precision(None, "fp32", "p")  # none given: the stored one
    check_precision("bf16", "bf16", "p")
    with pytest.raises(UsageError, match="started in fp32 and resumes in it; expected --precision fp32"):
        check_precision("bf16", "fp32", "p")
    auto_here = resolve_precision("auto", "cpu")
    check_precision("auto", auto_here, "p")
    with pytest.raises(UsageError):
        check_precision("auto", "fp32" if auto_here == "bf16" else "bf16", "p")
