"""A winner's retraining starts from its trial's weights (a retrained model at least as good as its
trial). The trial proxy-trains at the profile's proxy width; its weights reach the driver on a Ray queue
(driver.put_weights) and are stored, manifest-checked, under `trial-weights/<trial run id>/`. The retraining
widens them to the full width, keeping their function (search_space/widen.py), and trains on from there.

Why inherit rather than lengthen the schedule: a retraining from scratch must first relearn what the trial
learned, so at the quick profile's 400 steps it scored below its own 280-step half-width trial (30.41 against
30.65 dB in the issue); started from the trial's function, it begins at the trial's score, and every step it
takes is training that the trial did not have. It is also cheaper than a longer schedule.
"""
from __future__ import annotations

import io
import os
import tempfile
from typing import Callable

TRIAL_WEIGHTS = "trial-weights"
WEIGHTS_FILE = "proxy.pt"


def save_trial_weights(store, run_id: str, data: bytes) -> str | None:
    """The trial's proxy-trained weights (torch.save bytes) as a manifest-checked set; returns its URI, or None
    where the store refused them (its retraining then starts from scratch, and says so; a store that is down is
    the search's own watch's to report, not this optional copy's)."""
    from storage.manifest import put_artifact_set
    from storage.stores import StorageError
    handle, path = tempfile.mkstemp(suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return put_artifact_set(store, f"{TRIAL_WEIGHTS}/{run_id}", {WEIGHTS_FILE: path})
    except (StorageError, OSError):
        return None
    finally:
        os.unlink(path)


def inherited_state(store, run_id: str, genotype, proxy_channels: int | None, seed: int = 0,
                    top_up: tuple[int, Callable] | None = None) -> tuple[dict | None, str]:
    """(full-width weights computing the trial's function, a line saying what was inherited), or (None, why not):
    no weights stored for the trial (a search before this was built, or a trial recorded after its driver died),
    a store that fails the manifest check, or an attention kind that cannot be widened. `top_up` (steps,
    train(narrow genotype, state, steps) -> state): a sweep's trial, which fine-tuned fewer steps than a search's
    trial trains, first trains those steps more at its own width, so that every retraining starts from a trial
    trained as long."""
    import torch

    from search_space.widen import widen_state
    from storage.manifest import verify_artifact_set
    from storage.stores import StorageError
    prefix = f"{TRIAL_WEIGHTS}/{run_id}"
    if not store.exists(f"{prefix}/manifest.json"):
        return None, "from scratch: no weights stored for its trial"
    try:
        verify_artifact_set(store, prefix)
        state = torch.load(io.BytesIO(store.get_bytes(f"{prefix}/{WEIGHTS_FILE}")), map_location="cpu",
                           weights_only=True)
    except (StorageError, RuntimeError, OSError) as error:
        return None, f"from scratch: its trial's weights fail their check ({error})"
    narrow = genotype.replace(channels=int(proxy_channels or genotype.channels))
    topped = ""
    if top_up is not None and top_up[0] > 0:
        state = top_up[1](narrow, state, top_up[0])
        topped = f", topped up by {top_up[0]} steps at its width"
    try:
        widened = widen_state(state, narrow, genotype, seed=seed)
    except (ValueError, IndexError, RuntimeError) as error:
        return None, f"from scratch: its trial's weights cannot be widened ({error})"
    if narrow.channels == genotype.channels:
        return widened, f"from its trial's weights{topped} ({genotype.channels} channels, the trial's own width)"
    return widened, f"from its trial's weights{topped}, widened from {narrow.channels} to {genotype.channels} channels"


def top_up_trial(settings, genotype, state: dict, steps: int, seed: int) -> dict:
    """A sweep trial's weights (at its proxy width) trained `steps` more, as its proxy training trains (fresh
    optimizer, the seed's data stream): the CPU state. Plain function (no Ray)."""
    from workers.train import train
    model = train(genotype=genotype, task=settings.task, data=settings.data, profile=settings.profile, steps=steps,
                  init_state=state, seed=seed).model
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
