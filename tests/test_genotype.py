import json

import pytest
import torch

from search_space.backbone import build_network
from search_space.genotype import Genotype

GOOD = Genotype(task="sr", scale=3, in_channels=3, channels=8, blocks=4, stages=2, attention="acla", max_keys=4,
                adaptive=True, positions=(1, 3), keys=((2,), (3, 1)))


def test_json_round_trip():
    assert Genotype.from_json(GOOD.to_json()) == GOOD
    assert json.loads(GOOD.to_json())["version"] == 1


@pytest.mark.parametrize("change,message", [
    ({"colour": True}, "unknown field"),
    ({"version": 2}, "version"),
    ({"task": "deblur"}, "unknown task"),
    ({"scale": 5}, "scale"),
    ({"positions": [1, 4], "keys": [[2], [1, 1]]}, "out of range"),
    ({"positions": [3, 1]}, "increasing"),
    ({"keys": [[2], [3]]}, "reference layers"),
    ({"keys": [[2], [9, 1]]}, "key count"),
    ({"blocks": 5}, "multiple of stages"),
    ({"channels": "8"}, "must be an integer from 1 to 1024"),
    ({"attention": "none", "adaptive": False}, "takes no positions"),
    ({"positions": 3}, "positions must be a list"),
    ({"keys": [["x"], [1, 1]]}, "keys must be a list"),
])
def test_invalid_genotypes_raise_clear_errors(change, message):
    data = {**GOOD.to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        Genotype.from_json(json.dumps(data))


def test_not_json():
    with pytest.raises(ValueError, match="not valid JSON"):
        Genotype.from_json("{task: sr")
    with pytest.raises(ValueError, match="must be an object"):
        Genotype.from_json("[1, 2]")


def test_frozen():
    with pytest.raises(Exception):
        GOOD.channels = 16


@pytest.mark.parametrize("task,scale,in_channels", [("sr", 2, 3), ("sr", 3, 3), ("sr", 4, 3), ("denoise", 1, 3),
                                                    ("car", 1, 1), ("demosaic", 1, 3)])
@pytest.mark.parametrize("attention", ["acla", "cla", "nonlocal", "none"])
def test_build_network_shapes(task, scale, in_channels, attention):
    keys = {"acla": ((2,), (3, 1)), "cla": ((4,), (4, 4))}.get(attention, ())
    positions = () if attention == "none" else (1, 3)
    genotype = Genotype(task=task, scale=scale, in_channels=in_channels, channels=8, blocks=4, stages=2,
                        attention=attention, max_keys=4, adaptive=attention == "acla", positions=positions, keys=keys)
    network = build_network(genotype)
    x = torch.rand(2, in_channels, 6, 5)
    y = network(x)
    assert y.shape == (2, in_channels, 6 * scale, 5 * scale)
    y.mean().backward()


def test_acla_without_adaptive_keys_is_refused_with_a_pointer_to_cla():
    with pytest.raises(ValueError, match="use 'cla'"):
        Genotype.from_dict({**GOOD.to_dict(), "adaptive": False})


def test_genotype_module_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, search_space.genotype, search_space.budget, search_space.cost, search_space.registry, "
            "orchestrator.cli.main, orchestrator.runtime.records; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("change,message", [
    ({"scale": 3.0}, "scale 3.0 is not supported"),
    ({"channels": 1_000_000}, "channels must be an integer from 1 to 1024"),
    ({"blocks": 100_000_000, "stages": 2}, "blocks must be an integer from 1 to 512"),
    ({"max_keys": 10_000_000}, "max_keys must be an integer from 1 to 64"),
    ({"nonlocal_grid": 0}, "nonlocal_grid must be an integer from 1 to 256"),
])
def test_out_of_range_fields_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        Genotype.from_dict({**GOOD.to_dict(), **change})


def test_deeply_nested_json_is_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        Genotype.from_json("[" * 100_000 + "]" * 100_000)
