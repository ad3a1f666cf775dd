"""The outer search's backbones: they spend the budget (orchestrator/trial.py)."""

def test_backbones_span_half_to_all_of_the_budget_and_warn_when_they_cannot():
    from workers.backbones import bare_macs, feasible_backbones, parse_backbone, unused_budget_warning
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    task, quick = task_from_options("car"), get_profile("quick")
    labels, _ = feasible_backbones(task, quick, 50e9)
    assert labels == ["c56-b8", "c64-b8"]
    for label in labels:
        assert 0.5 * 50e9 <= bare_macs(task, *parse_backbone(label), quick.stages) <= 50e9
    assert unused_budget_warning(task, quick, 50e9) is None
    smoke = get_profile("smoke")  # at most 32 channels x 4 blocks: 5.5 GMACs at 256x256
    assert feasible_backbones(task, smoke, 20e9)[0] == ["c32-b4"]
    assert "uses 28% of the 20.00GMACs budget" in unused_budget_warning(task, smoke, 20e9)
