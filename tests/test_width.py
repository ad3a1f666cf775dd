"""The width line: the plain backbone that best fills a budget, trained alike to the trials, and the
searched trials' gain over it."""
import pytest

from orchestrator.search.trial import TrialSettings
from orchestrator.search.width import gain_over_width, train_width, width_backbone, width_line_text
from workers.backbones import bare_macs, feasible_backbones, parse_backbone
from workers.data import embedded_sets
from workers.profiles import get_profile
from workers.tasks import task_from_options
from workers.train import DataSpec, train


def test_the_width_backbone_is_the_costliest_plain_backbone_within_the_budget():
    task, profile = task_from_options("car"), get_profile("quick")
    for budget in (13e9, 50e9):
        chosen = width_backbone(task, profile, budget)
        costs = {label: bare_macs(task, *parse_backbone(label), profile.stages)
                 for label in feasible_backbones(task, profile, budget)[0]}
        assert costs[chosen] == max(costs.values()) <= budget
        # nothing wider at the profile's channel step fits the budget
        channels, blocks = parse_backbone(chosen)
        assert bare_macs(task, channels + profile.channel_step, blocks, profile.stages) > budget


def test_the_width_net_is_trained_as_a_trial_is_at_the_proxy_width():
    """Oracle: the same training called directly (the proxy-width plain genotype, a trial's steps, its seed)."""
    from search_space.cost import genotype_macs
    from search_space.genotype import Genotype
    task, profile = task_from_options("car"), get_profile("smoke")
    settings = TrialSettings(task=task, budget_macs=2e9, profile=profile, data=DataSpec(*embedded_sets()), seed=5)
    backbone = width_backbone(task, profile, 2e9)
    result = train_width(settings, backbone)
    channels, blocks = parse_backbone(backbone)
    target = Genotype(task="car", scale=1, in_channels=3, channels=channels, blocks=blocks, stages=profile.stages)
    proxy = target.replace(channels=profile.proxy_channels(channels))
    direct = train(genotype=proxy, task=task, data=settings.data, profile=profile,
                   steps=profile.search_steps + profile.train_steps, seed=5).metrics
    assert result["psnr"] == direct["psnr_y"] and result["psnr_rgb"] == direct["psnr_rgb"]  # car: Y is headline
    assert result["macs"] == genotype_macs(target) <= 2e9 and result["proxy_macs"] == genotype_macs(proxy)
    assert result["steps"] == profile.search_steps + profile.train_steps


def test_a_sweeps_width_net_inherits_the_shared_supernet_at_its_width_and_fine_tunes_as_its_trials(tmp_path):
    """Oracle: the plain proxy network trained directly for the sweep's steps from weights sliced by hand from the
    widest supernet (its backbone tensors only: the plain network has no attention)."""
    from search_space.backbone import build_network
    from search_space.genotype import Genotype
    from workers.shared_config import SharedConfig
    from workers.shared_run import load_shared_search, train_shared_supernet
    task, profile, data = task_from_options("car"), get_profile("smoke"), DataSpec(*embedded_sets())
    config = SharedConfig(task=task, budgets=(1.5e9, 2e9), stages=profile.stages, max_keys=profile.max_keys)
    path = str(tmp_path / "shared.pt")
    train_shared_supernet(config, data, profile, steps=3, checkpoint_path=path)
    settings = TrialSettings(task=task, budget_macs=2e9, profile=profile, data=data, seed=5, shared_supernet=path)
    backbone = width_backbone(task, profile, 2e9)
    result = train_width(settings, backbone)
    channels, blocks = parse_backbone(backbone)
    proxy = Genotype(task="car", scale=1, in_channels=3, channels=profile.proxy_channels(channels), blocks=blocks,
                     stages=profile.stages)
    shared, _ = load_shared_search(path, task, profile)
    widest = {k.removeprefix("net."): v for k, v in shared.elastic.widest.state_dict().items()}
    by_hand = {k: widest[k][tuple(slice(0, n) for n in v.shape)] for k, v in build_network(proxy).state_dict().items()}
    direct = train(genotype=proxy, task=task, data=data, profile=profile, steps=profile.sweep_steps(),
                   init_state=by_hand, seed=5).metrics
    assert result["psnr"] == direct["psnr_y"] and result["steps"] == profile.sweep_steps()
    scratch = train(genotype=proxy, task=task, data=data, profile=profile, steps=profile.sweep_steps(), seed=5).metrics
    assert scratch["psnr_y"] != direct["psnr_y"]  # it did inherit


def test_gain_is_the_best_trial_within_the_budget_minus_the_width_point():
    width = {"backbone": "c40-b8", "macs": 1.9e9, "budget_macs": 2e9, "psnr": 30.0, "psnr_rgb": 27.0}
    trials = [{"run_id": "a", "macs": 1.8e9, "psnr": 30.2, "psnr_rgb": 26.9},
              {"run_id": "b", "macs": 2.1e9, "psnr": 31.0, "psnr_rgb": 28.0},  # over this budget: not counted
              {"run_id": "c", "macs": 1.0e9, "psnr": 29.0, "psnr_rgb": 26.0}]
    gain = gain_over_width(width, trials)
    assert gain["best"] == "a" and gain["gain"] == pytest.approx(0.2) and gain["gain_rgb"] == pytest.approx(-0.1)
    assert gain["beats"] and "above it on this one seed" in width_line_text(width, gain)
    below = gain_over_width({**width, "psnr": 30.5}, trials)
    assert not below["beats"] and "does not beat width" in width_line_text(width, below)
    assert gain_over_width(width, trials[1:2])["gain"] is None
    # with paired seeds (--width-seeds), the recorded interval decides and is stated
    seeded = {**width, "seeds": 3, "gain_mean": -0.05, "gain_low": -0.2, "gain_high": 0.1}
    gain = gain_over_width(seeded, trials)
    assert gain["interval"] == {"mean": -0.05, "low": -0.2, "high": 0.1, "seeds": 3} and not gain["beats"]
    assert "with 3 seeds, -0.05 dB" in width_line_text(seeded, gain) and "not resolved" in width_line_text(seeded, gain)
    above = gain_over_width({**seeded, "gain_mean": 0.3, "gain_low": 0.1, "gain_high": 0.5}, trials)
    assert above["beats"] and "interval excluding zero" in width_line_text(seeded, above)


def test_the_front_plot_draws_the_width_line(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from orchestrator.tracking.pareto import plot_front
    drawn = []
    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append(k.get("label")) or original(self, *a, **k))
    plot_front(str(tmp_path / "f.png"), points=[(30.0, 1e9), (30.5, 2e9)], on_front=[True, True], budget_macs=2e9,
               title="t", width=[(30.2, 1.9e9), (29.8, 0.95e9)])
    assert "width line (plain, widest in budget)" in drawn and (tmp_path / "f.png").stat().st_size > 0


def test_a_recorded_width_point_is_reused_not_trained_again(tmp_path, monkeypatch):
    """A resumed search finds its width point under its parent (a real sqlite MLflow store) and trains nothing;
    another parent's point is not taken for it."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from orchestrator.search import width as width_module
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("acla-car-q10", artifact_location=str(tmp_path / "artifacts"))
    parents = [client.create_run(experiment).info.run_id for _ in range(2)]
    for parent, psnr in zip(parents, (30.1, 29.0)):
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "acla_kind": "width",
                                                  "budget_macs": str(int(2e9))})
        client.log_batch(run.info.run_id, metrics=[Metric("psnr", psnr, 0, 0), Metric("macs", 1.4e9, 0, 0)],
                         params=[Param("backbone", "c16-b4"), Param("net", "16x4")])
        client.set_terminated(run.info.run_id, "FINISHED")
    monkeypatch.setattr(width_module, "tune_width", lambda *a: pytest.fail("a recorded width point was trained again"))
    settings = TrialSettings(task=task_from_options("car"), budget_macs=2e9, profile=get_profile("smoke"),
                             data=DataSpec(*embedded_sets()), seed=0)
    found = width_module.finish_width_points(width_module.start_width_points(
        [(settings, parents[0], None)], {"cpu": 1, "gpu": 0}, client, experiment), client, experiment)[2e9]
    assert (found["psnr"], found["macs"], found["backbone"], found["budget_macs"]) == (30.1, 1.4e9, "c16-b4", 2e9)
    assert client.get_run(found["run_id"]).data.tags["mlflow.parentRunId"] == parents[0]
