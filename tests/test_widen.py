"""Widening a trained proxy to the retraining's width keeps its function (search_space/widen.py), for every
keyed attention kind and every task tail; the copies it makes differ, so training can tell them apart."""
import pytest
import torch

from search_space.backbone import build_network
from search_space.genotype import Genotype, refs_at_position
from search_space.registry import ATTENTION, SEARCHABLE_KINDS, TASK_NAMES
from search_space.widen import channel_map, widen_state
from workers.tasks import task_from_options

WIDENABLE = [kind for kind in SEARCHABLE_KINDS if kind != "nonlocal"]


def _genotype(kind: str, task: str, channels: int, derived: bool) -> Genotype:
    spec = task_from_options(task)
    base = Genotype(task=task, scale=spec.scale, in_channels=spec.in_channels, channels=channels, blocks=4,
                    stages=2, attention=kind, max_keys=3, adaptive=ATTENTION[kind].adaptive)
    if kind == "none":
        return base
    if not base.uses_keys:  # non-local: positions only
        return base.replace(positions=[1, 3])
    positions = [1, 3]
    keys = [[2 if derived and base.adaptive else 3] * refs_at_position(p, 4, 2) for p in positions]
    return base.replace(positions=positions, keys=keys)


def _randomised(genotype: Genotype, seed: int) -> torch.nn.Module:
    """A network whose every parameter is random (the zero-initialised predictors would make the check easy)."""
    torch.manual_seed(seed)
    net = build_network(genotype)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return net.eval()


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("kind", WIDENABLE)
@pytest.mark.parametrize("wide", [8, 11])  # twice as wide, and a width that the narrow one does not divide
def test_the_widened_network_computes_the_narrow_ones_function(kind, task, wide):
    narrow = _genotype(kind, task, 4, derived=True)
    small = _randomised(narrow, seed=1)
    big = build_network(narrow.replace(channels=wide)).eval()
    big.load_state_dict(widen_state(small.state_dict(), narrow, narrow.replace(channels=wide), seed=3))
    x = torch.rand(2, narrow.in_channels, 10, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = small(x), big(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_copies_differ_and_every_narrow_channel_is_kept():
    narrow = _genotype("acla", "car", 4, derived=False)
    state = _randomised(narrow, seed=1).state_dict()
    widened = widen_state(state, narrow, narrow.replace(channels=8), seed=0)
    conv = widened["body.0.conv2.weight"]  # (8, 8, 3, 3): reads channels 0-3 and their copies 4-7
    mapping = channel_map(4, 8, torch.Generator().manual_seed(0))
    assert sorted(mapping.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    copy = int((mapping[4:] == mapping[0]).nonzero()[0]) + 4  # the channel that copies channel 0
    assert not torch.allclose(conv[:, 0], conv[:, copy])  # split unevenly: training tells them apart
    torch.testing.assert_close(conv[:4, 0] + conv[:4, copy], state["body.0.conv2.weight"][:, 0])
    assert torch.equal(widened["head.weight"][copy], state["head.weight"][0])  # incoming weights copied


def test_widening_refuses_what_it_cannot_keep():
    narrow = _genotype("nonlocal", "car", 4, derived=False)
    state = build_network(narrow).state_dict()
    with pytest.raises(ValueError, match="cannot widen"):
        widen_state(state, narrow, narrow.replace(channels=8))
    plain = _genotype("none", "car", 8, derived=False)
    with pytest.raises(ValueError, match="cannot widen 8 channels to 4"):
        widen_state(build_network(plain).state_dict(), plain, plain.replace(channels=4))
    with pytest.raises(ValueError, match="the wide genotype"):
        widen_state(build_network(plain).state_dict(), plain, plain.replace(channels=12, blocks=8, stages=2))


def test_a_retraining_inherits_its_trials_weights_from_the_store(tmp_path):
    import io

    from orchestrator.retrain.inherit import TRIAL_WEIGHTS, WEIGHTS_FILE, inherited_state, save_trial_weights
    from storage.stores import LocalStore
    store = LocalStore(tmp_path)
    narrow = _genotype("acla", "car", 4, derived=True)
    wide = narrow.replace(channels=8, expected_keys=[[1.5], [1.25, 2.0]])  # the trial's measured keys ride along
    small = _randomised(narrow, seed=1)
    buffer = io.BytesIO()
    torch.save(small.state_dict(), buffer)
    save_trial_weights(store, "run1", buffer.getvalue())
    state, note = inherited_state(store, "run1", wide, proxy_channels=4)
    assert note == "from its trial's weights, widened from 4 to 8 channels"
    big = build_network(wide).eval()
    big.load_state_dict(state)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=1e-4, atol=1e-4)
    assert inherited_state(store, "run2", wide, 4) == (None, "from scratch: no weights stored for its trial")
    (tmp_path / TRIAL_WEIGHTS / "run1" / WEIGHTS_FILE).write_bytes(b"not the weights")
    state, note = inherited_state(store, "run1", wide, 4)
    assert state is None and note.startswith("from scratch: its trial's weights fail their check")


def test_a_sweep_trial_is_topped_up_at_its_width_before_it_is_widened(tmp_path):
    """A sweep's trial fine-tuned fewer steps than a search's trial trains: its retraining first trains the missing
    steps at the trial's width (oracle: the same training called directly), then widens that."""
    import dataclasses
    import io

    from orchestrator.retrain.inherit import inherited_state, save_trial_weights, top_up_trial
    from orchestrator.runtime.records import TrialRecord
    from orchestrator.search.trial import TrialSettings
    from orchestrator.retrain.winners import trial_top_up
    from storage.stores import LocalStore
    from workers.data import embedded_sets
    from workers.profiles import get_profile
    from workers.tasks import task_from_options
    from workers.train import DataSpec, train
    narrow = _genotype("acla", "car", 4, derived=True)
    wide = narrow.replace(channels=8)
    small = _randomised(narrow, seed=2)
    buffer = io.BytesIO()
    torch.save(small.state_dict(), buffer)
    store = LocalStore(tmp_path)
    save_trial_weights(store, "run1", buffer.getvalue())
    profile = dataclasses.replace(get_profile("smoke"), stages=narrow.stages)
    settings = TrialSettings(task=task_from_options("car"), budget_macs=2e9, profile=profile,
                             data=DataSpec(*embedded_sets()), seed=3)
    record = lambda steps: TrialRecord("t", "run1", {}, {"proxy_steps": steps, "genotype": wide.to_json()}, "")
    assert trial_top_up(settings, record(float(profile.train_steps))) is None  # a search's trial: nothing missing
    assert trial_top_up(settings, TrialRecord("t", "run1", {}, {}, "")) is None  # recorded before the steps were
    missing, _ = trial_top_up(settings, record(2.0))
    assert missing == profile.train_steps - 2
    calls = []

    def direct(genotype, state, steps):
        calls.append((genotype, steps))
        return top_up_trial(settings, genotype, state, steps, settings.seed)
    state, note = inherited_state(store, "run1", wide, 4, top_up=(missing, direct))
    assert calls == [(narrow, missing)] and f"topped up by {missing} steps at its width" in note
    topped = train(genotype=narrow, task=settings.task, data=settings.data, profile=profile, steps=missing,
                   init_state=small.state_dict(), seed=3).model.eval()
    big = build_network(wide).eval()
    big.load_state_dict(state)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(big(x), topped(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(topped(x), small.eval()(x), atol=1e-4)  # the top-up trained


def test_a_store_that_refuses_the_weights_leaves_none_and_the_retraining_starts_from_scratch(tmp_path):
    from orchestrator.retrain.inherit import inherited_state, save_trial_weights
    from storage.stores import LocalStore, StorageError

    class Refusing(LocalStore):
        def put(self, local_path, key, metadata=None):
            raise StorageError(f"put {key} failed: the store is down")
    store = Refusing(tmp_path)
    assert save_trial_weights(store, "run1", b"weights") is None
    genotype = _genotype("acla", "car", 8, derived=True)
    assert inherited_state(store, "run1", genotype, 4) == (None, "from scratch: no weights stored for its trial")
