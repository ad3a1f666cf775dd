"""The shared loops: resume equals uninterrupted, checkpoints describe themselves, evaluation conventions."""
import dataclasses

import numpy as np
import pytest
import torch

from search_space.cost import genotype_macs
from search_space.genotype import Genotype
from workers.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from workers.data import ImageSet
from workers.profiles import get_profile
from workers.search_run import SearchConfig, run_search
from workers.tasks import TaskSpec
from workers.train import DataSpec, evaluate, train

SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from PIL import Image
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(3):
        base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((64, 56), Image.BICUBIC))
        Image.fromarray(smooth).save(folder / f"img{index}.png")
    paths = tuple(sorted(str(p) for p in folder.iterdir()))
    return DataSpec(ImageSet("train", paths[:2]), ImageSet("valid", paths[2:]))


def genotype_for(task: TaskSpec, attention="acla"):
    keys = {"acla": [[2], [3, 1]], "cla": [[4], [4, 4]]}.get(attention, [])
    return Genotype(task=task.name, scale=task.scale, in_channels=task.in_channels, channels=8, blocks=4, stages=2,
                    attention=attention, max_keys=4, adaptive=attention == "acla",
                    positions=[] if attention == "none" else [1, 3], keys=keys)


@pytest.mark.parametrize("task", [TaskSpec("denoise"), TaskSpec("sr", scale=2), TaskSpec("car", gray=True),
                                  TaskSpec("demosaic")], ids=lambda t: t.label)
def test_resumed_run_equals_uninterrupted(task, tiny_data, tmp_path):
    genotype = genotype_for(task)
    full = train(genotype=genotype, task=task, data=tiny_data, profile=SMOKE, checkpoint_path=str(tmp_path / "a.pt"))
    half = train(genotype=genotype, task=task, data=tiny_data, profile=SMOKE, checkpoint_path=str(tmp_path / "b.pt"),
                 stop_after=3)
    assert half.steps == 3 and half.metrics == {}
    resumed = train(genotype=genotype, task=task, data=tiny_data, profile=SMOKE, resume_from=str(tmp_path / "b.pt"),
                    checkpoint_path=str(tmp_path / "b.pt"))
    assert resumed.steps == full.steps == SMOKE.train_steps
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.metrics == full.metrics


def test_checkpoint_describes_itself(tiny_data, tmp_path):
    task = TaskSpec("sr", scale=2)
    genotype = genotype_for(task)
    path = tmp_path / "model.pt"
    result = train(genotype=genotype, task=task, data=tiny_data, profile=SMOKE, checkpoint_path=str(path))
    payload = load_checkpoint(path)  # weights_only=True inside
    assert payload["profile"] == "smoke" and payload["code_version"] and payload["step"] == SMOKE.train_steps
    model, loaded_genotype, loaded_task, _ = model_from_checkpoint(path)
    assert loaded_genotype == genotype and loaded_task == task
    x = torch.rand(1, 3, 10, 10)
    result.model.eval()
    torch.testing.assert_close(model(x), result.model(x))
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_bad_checkpoints(tmp_path):
    truncated = tmp_path / "t.pt"
    torch.save({"model": {}}, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "f.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="missing fields"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "none.pt")


def test_evaluate_identity_model_scores_the_baseline(tiny_data):
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x
    task = TaskSpec("car", quality=10)
    metrics = evaluate(Identity(), task, tiny_data.valid)
    assert metrics["psnr_y"] == pytest.approx(metrics["input_psnr_y"])
    assert metrics["images"] == 1


@pytest.mark.parametrize("attention", ["acla", "cla", "nonlocal"])
def test_run_search_on_task_data(attention, tiny_data):
    task = TaskSpec("denoise", sigma=50.0)
    config = SearchConfig(task=task, budget_macs=6e8, channels=8, blocks=4, stages=2, max_keys=4, attention=attention)
    records = []
    result = run_search(config, tiny_data, SMOKE, records.append)
    assert genotype_macs(result.genotype) <= config.budget_macs
    assert records and records[-1]["step"] == SMOKE.search_steps
    assert len(result.outcome.position_scores) == 4 and "position_scores" in records[-1]
    # the derived network can inherit the supernet's weights
    trained = train(genotype=result.genotype, task=task, data=tiny_data, profile=SMOKE, init_state=result.supernet_state)
    assert np.isfinite(trained.metrics["psnr_rgb"])


def test_proxy_search_derives_at_the_target_width(tiny_data):
    """A search at half width derives its genotype on the full-width backbone, within the user's budget."""
    task = TaskSpec("denoise", sigma=50.0)
    profile = dataclasses.replace(SMOKE, proxy_width=0.5)
    bare16 = genotype_macs(Genotype(task="denoise", scale=1, in_channels=3, channels=16, blocks=4, stages=2))
    config = SearchConfig(task=task, budget_macs=bare16 * 1.1, channels=16, blocks=4, stages=2, max_keys=4)
    result = run_search(config, tiny_data, profile)
    assert result.genotype.channels == 16 and result.proxy_genotype.channels == 8
    assert (result.genotype.positions, result.genotype.keys) == (result.proxy_genotype.positions,
                                                                 result.proxy_genotype.keys)
    assert genotype_macs(result.genotype) <= config.budget_macs
    assert result.supernet_state["head.weight"].shape[0] == 8  # the supernet was the proxy


@pytest.mark.parametrize("task", [TaskSpec("car"), TaskSpec("sr", scale=2)], ids=lambda t: t.label)
def test_a_retraining_from_the_widened_trial_starts_at_the_trials_score(task, tiny_data):
    """The trial's proxy-trained weights, widened to the retraining's width, score what the trial scored on
    the same validation images before a single step (a retrained model at least as good as its trial)."""
    from search_space.widen import widen_state
    proxy = genotype_for(task)
    trial = train(genotype=proxy, task=task, data=tiny_data, profile=SMOKE, seed=0)
    wide = proxy.replace(channels=12)
    inherited = widen_state(trial.model.state_dict(), proxy, wide, seed=0)
    start = train(genotype=wide, task=task, data=tiny_data, profile=SMOKE, seed=0, steps=0, init_state=inherited)
    assert set(start.model.state_dict()) == set(inherited)  # every weight inherited (shapes all match)
    for metric in ("psnr_y", "psnr_rgb"):
        assert abs(start.metrics[metric] - trial.metrics[metric]) < 1e-3, (metric, start.metrics, trial.metrics)


def test_optimizer_trains_sampling_offsets_at_a_tenth_of_the_rate():
    from search_space.backbone import build_network
    from workers.train import make_optimizer
    profile = get_profile("smoke")
    model = build_network(genotype_for(TaskSpec("denoise", sigma=25.0)))
    optimizer, _ = make_optimizer(model, profile)
    offsets = {id(p) for m in model.attention if hasattr(m, "offset_proj") for p in m.offset_proj.parameters()}
    assert [g["lr"] for g in optimizer.param_groups] == [profile.lr, pytest.approx(profile.lr * 0.1)]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == offsets and offsets
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    plain, _ = make_optimizer(build_network(genotype_for(TaskSpec("denoise", sigma=25.0), "none")), profile)
    assert len(plain.param_groups) == 1


def test_measured_active_keys_are_the_pixel_weighted_mean_per_module(tiny_data):
    """What a trial records as an adaptive derived network's expected keys: per module and reference layer, the
    mean count a query keeps on the validation images, weighted by their pixels (an oracle from the modules'
    own per-forward counts)."""
    from search_space.backbone import build_network
    from workers.data import evaluation_pairs, to_tensor
    from workers.train import measure_active_keys
    task = TaskSpec("denoise")
    torch.manual_seed(0)
    net = build_network(genotype_for(task))
    with torch.no_grad():  # scores of both signs, so that counts vary between queries
        for module in net.attention:
            if hasattr(module, "gate_proj") and module.gate_proj is not None:
                module.gate_proj.weight.normal_(std=1.0)
                module.gate_proj.bias.zero_()
    valid = ImageSet("two", tiny_data.train.paths)
    measured = measure_active_keys(net, task, valid)
    assert [len(m) for m in measured] == [1, 2]  # positions 1 and 3: one and two reference layers
    totals, pixels = [[0.0], [0.0, 0.0]], 0
    net.eval()
    for _, _, degraded in evaluation_pairs(task, valid):
        with torch.no_grad():
            net(to_tensor(degraded).unsqueeze(0))
        weight = degraded.shape[0] * degraded.shape[1]
        counts = [m.key_counts(expected=False) for m in net.attention if m.key_counts(expected=False) is not None]
        totals = [[t + weight * c for t, c in zip(total, count)] for total, count in zip(totals, counts)]
        pixels += weight
    want = [[t / pixels for t in total] for total in totals]
    assert [m for ms in measured for m in ms] == pytest.approx([w for ws in want for w in ws])
    caps = [[2], [3, 1]]
    assert all(0 <= m <= cap for ms, cs in zip(measured, caps) for m, cap in zip(ms, cs))
    assert any(0 < m < cap for ms, cs in zip(measured, caps) for m, cap in zip(ms, cs))  # adaptive, not the cap
    assert measure_active_keys(build_network(genotype_for(task, "cla")), task, valid) == []


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_share_one_global_batch(tiny_data, workers):
    """Ray Train's workers draw one global batch per step between them: 1, 2 or 3 workers see the same
    number of patches per step, so --retrain-workers changes the speed, not the model's schedule."""
    from workers.train import TrainHooks, batch_share, make_sampler
    task = TaskSpec("denoise")
    profile = dataclasses.replace(SMOKE, batch_size=5)
    shares = [next(make_sampler(task, tiny_data.train, profile, seed=r, share=(r, workers)))[0].shape[0]
              for r in range(workers)]
    assert sum(shares) == 5 and max(shares) - min(shares) <= 1
    assert [batch_share(5, r, workers) for r in range(workers)] == shares
    result = train(genotype=genotype_for(task, "none"), task=task, data=tiny_data, profile=profile, steps=2,
                   hooks=TrainHooks(batch_share=(workers - 1, workers), evaluate=False))
    assert all(record["patches"] == shares[-1] for record in result.history)
    with pytest.raises(ValueError, match="at most 5 workers"):
        batch_share(5, 0, 6)
