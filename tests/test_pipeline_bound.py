"""benchmarks/pipeline.py's `bound`: what the modules may cost over the bare backbone for the speed targets to hold,
against what they cost, checked against the arithmetic done by hand."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("pipeline_benchmark", os.path.join(ROOT, "benchmarks", "pipeline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_modules_cost_and_allowance_in_ms(pipeline):
    # 4, 5 and 8 steps/s are 250, 200 and 125 ms a step: the modules cost 250 - 125 = 125 ms, and for 0.9 of
    # plain's steps/s a step may take 200 / 0.9 = 222.2 ms, so the modules may cost 222.2 - 125 = 97.2 ms.
    # Latency 140, 120 and 70 ms: the modules cost 70 ms and may cost 1.25 * 120 - 70 = 80 ms.
    bound = pipeline.module_bound({"acla_searched": 4.0, "plain_matched": 5.0, "bare_backbone": 8.0},
                                  {"acla_searched": 140.0, "plain_matched": 120.0, "bare_backbone": 70.0})
    assert bound == {"training_module_ms": 125.0, "training_allowance_ms": 97.2,
                     "latency_module_ms": 70.0, "latency_allowance_ms": 80.0}


def test_modules_within_their_allowance_meet_both_targets(pipeline):
    # at exactly the targets' ratios (0.9 of the steps/s, 1.25 of the latency) cost equals allowance
    bound = pipeline.module_bound({"acla_searched": 4.5, "plain_matched": 5.0, "bare_backbone": 9.0},
                                  {"acla_searched": 125.0, "plain_matched": 100.0, "bare_backbone": 50.0})
    assert bound["training_module_ms"] == bound["training_allowance_ms"] == pytest.approx(111.1)
    assert bound["latency_module_ms"] == bound["latency_allowance_ms"] == 75.0
