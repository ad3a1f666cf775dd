import os
from pathlib import Path

import pytest
import torch

from search_space.acla import deformable_sample, masked_softmax
from search_space.sampling import spread_offsets
from tests.oracles import naive_deformable_sample


def random_case(batch=2, channels=3, keys=3, height=5, width=6, spread=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    # Offsets up to `spread` pixels: many samples leave the image, some only partly.
    offsets = (torch.rand(batch, keys, height, width, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    return values, offsets


@pytest.mark.parametrize("shape", [(2, 3, 3, 5, 6), (1, 2, 1, 4, 4), (1, 1, 2, 1, 7), (1, 2, 2, 3, 1)])
def test_matches_naive_loop(shape):
    values, offsets = random_case(*shape)
    got = deformable_sample(values, offsets)
    want = naive_deformable_sample(values, offsets)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_float32_matches_naive_loop():
    values, offsets = random_case(seed=3)
    got = deformable_sample(values.float(), offsets.float())
    torch.testing.assert_close(got.double(), naive_deformable_sample(values, offsets), rtol=1e-4, atol=1e-5)


def test_gradcheck():
    values, offsets = random_case(1, 2, 2, 3, 4, spread=1.7, seed=1)
    # Keep away from integer positions, where bilinear sampling has a kink.
    offsets = offsets.round() + 0.25 + 0.5 * torch.rand_like(offsets)
    values.requires_grad_(True)
    offsets.requires_grad_(True)
    assert torch.autograd.gradcheck(deformable_sample, (values, offsets), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 0), (0, -2), (-1, 1), (7, 0)])
def test_integer_offsets_shift_exactly(dx, dy):
    # grid_sample's coordinate normalisation rounds, so "exact" here is to float64 rounding (1e-12).
    values = torch.arange(2 * 5 * 6, dtype=torch.float64).view(1, 2, 5, 6)
    offsets = torch.zeros(1, 1, 5, 6, 2, dtype=torch.float64)
    offsets[..., 0], offsets[..., 1] = dx, dy
    got = deformable_sample(values, offsets)[:, :, 0]
    want = torch.zeros_like(values)
    for y in range(5):
        for x in range(6):
            if 0 <= y + dy < 5 and 0 <= x + dx < 6:
                want[:, :, y, x] = values[:, :, y + dy, x + dx]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        deformable_sample(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 4, 2))
    with pytest.raises(ValueError):
        deformable_sample(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3))


def test_spread_offsets_ring():
    nine = {tuple(p) for p in spread_offsets(9).int().tolist()}
    assert nine == {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    assert spread_offsets(1).tolist() == [[0.0, 0.0]]
    assert len({tuple(p) for p in spread_offsets(20).tolist()}) == 20


def test_masked_softmax_excludes_gated_keys():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]]).view(1, 4, 1, 1)
    gates = torch.tensor([[1.0, 0.0, 1.0, 1.0]]).view(1, 4, 1, 1)
    got = masked_softmax(logits, gates, dim=1)
    subset = torch.softmax(torch.tensor([1.0, 3.0, 0.5]), 0)
    torch.testing.assert_close(got.flatten(), torch.tensor([subset[0], 0.0, subset[1], subset[2]]))
    assert torch.equal(masked_softmax(logits, torch.zeros_like(gates), dim=1), torch.zeros_like(logits))


def test_masked_softmax_all_gates_off_has_finite_gate_gradient():
    # A key turned on alone would take all the weight: the gradient is the unmasked softmax times d loss / d w.
    logits = torch.tensor([1.0, 2.0, 0.5])
    gates = torch.zeros(3, requires_grad=True)
    upstream = torch.tensor([0.3, -1.0, 2.0])
    (masked_softmax(logits, gates) * upstream).sum().backward()
    torch.testing.assert_close(gates.grad, torch.softmax(logits, 0) * upstream)


def test_unbuildable_kernel_falls_back_with_one_warning_line(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension
    from search_space.ops import acla_attend as op

    def broken_build(**kwargs):
        raise RuntimeError("Error building extension 'acla_aggregate'\nc++: error: unrecognized option\nmore log")
    monkeypatch.setattr(cpp_extension, "load", broken_build)
    monkeypatch.setattr(op, "_import_built", lambda build_dir, key: None)  # not built yet: load() must build
    op.load_extension.cache_clear()
    try:
        with pytest.warns(UserWarning) as caught:
            assert op.load_extension() is None
        message = str(caught[0].message)
        assert "grid_sample reference" in message and "\n" not in message
        values = [torch.randn(1, 3, 4, 5)]
        offsets, logits = torch.zeros(1, 4, 5, 2, 2), torch.zeros(1, 4, 5, 2)
        out = op.attend(values, offsets, logits, None, 2, torch.zeros(3))
        torch.testing.assert_close(out, values[0].permute(0, 2, 3, 1))  # two keys on the query pixel, weights 1/2
    finally:
        op.load_extension.cache_clear()  # the next caller builds (or loads) the real kernel again


@pytest.mark.parametrize("variable,deprecated", [("ACLA_DISABLE_CPU_KERNEL", False), ("ACLA_DISABLE_FAST_SAMPLING", True)])
def test_environment_forces_the_reference(monkeypatch, variable, deprecated):
    """The new variable, and its old name for one release, with a deprecation warning."""
    import warnings
    from search_space.ops import acla_attend as op
    monkeypatch.setenv(variable, "1")
    op.load_extension.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert op.load_extension() is None and not op.cpu_kernel_available(torch.zeros(1))
        assert any(issubclass(w.category, DeprecationWarning) and "ACLA_DISABLE_CPU_KERNEL" in str(w.message)
                   for w in caught) == deprecated
    finally:
        monkeypatch.delenv(variable)
        op.load_extension.cache_clear()


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    """torch's build lock has no timeout; one left by a killed build would make every later build wait forever."""
    import os
    import time
    from search_space.ops import acla_attend as op
    lock = tmp_path / "lock"
    lock.write_text("")
    op._clear_stale_lock(lock)  # fresh: a build is running
    assert lock.exists()
    old = time.time() - op.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="stale kernel build lock"):
        op._clear_stale_lock(lock)
    assert not lock.exists()
    op._clear_stale_lock(lock)  # no lock: nothing to do


def test_a_built_kernel_loads_past_a_lock_left_by_a_killed_process(tmp_path):
    """Once this source is built, loading takes no build lock: a lock left by a process killed while loading
    (found on 2026-11-29: every later trial waited on it) blocks nothing. A changed source is built again."""
    import shutil
    import subprocess
    import sys
    from search_space.ops import acla_attend as op
    module = op.load_extension()
    if module is None:
        pytest.skip("no compiler here: the kernel is not built")
    built = Path(module.__file__).parent
    copy = tmp_path / built.relative_to(built.parents[2])
    copy.mkdir(parents=True)
    for name in ("acla_aggregate.so", "build.key"):
        shutil.copy(built / name, copy / name)
    (copy / "lock").write_text("")  # fresh: younger than STALE_LOCK_SECONDS, so torch would wait on it
    probe = "from search_space.ops.acla_attend import load_extension; print(load_extension() is not None)"
    env = {**os.environ, "ACLA_EXTENSION_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
    assert op._import_built(copy, "another source") is None  # a stamp of other code is not trusted
