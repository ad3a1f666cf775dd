"""search_space/optim.py against its oracle, torch.optim's Adam and StepLR: the same parameters after every step,
to the bit, with two groups at their own rates and betas, a parameter whose gradient is missing on some steps, the
rate decayed on schedule, and a state dict saved by either one loaded into the other mid-run."""
import copy
import subprocess
import sys

import torch

from search_space.optim import Adam, StepLR


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1),
                               torch.nn.Conv2d(3, 3, 1))


def groups(net):
    first, rest = list(net[0].parameters()), list(net[2].parameters()) + list(net[3].parameters())
    return [{"params": rest, "lr": 2e-3}, {"params": first, "lr": 2e-4, "betas": (0.5, 0.999)}]


def steps(net, optimizer, scheduler, start, stop):
    for step in range(start, stop):
        torch.manual_seed(step)
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(2, 3, 8, 8)
        out = net[2](net[1](net[0](x)))
        if step % 3:  # net[3] takes part on two steps of three; on the third its gradient is None
            out = net[3](out)
        (out - x).abs().mean().backward()
        optimizer.step()
        scheduler.step()
    return [p.detach().clone() for p in net.parameters()], scheduler.get_last_lr()


def pair():
    ours, theirs = model(), model()
    ours_opt, theirs_opt = Adam(groups(ours), lr=1e-3), torch.optim.Adam(groups(theirs), lr=1e-3)
    return (ours, ours_opt, StepLR(ours_opt, step_size=4, gamma=0.5),
            theirs, theirs_opt, torch.optim.lr_scheduler.StepLR(theirs_opt, step_size=4, gamma=0.5))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_step_equals_torch_adam_and_steplr_to_the_bit():
    ours, ours_opt, ours_lr, theirs, theirs_opt, theirs_lr = pair()
    for start in range(0, 10):
        mine, my_lr = steps(ours, ours_opt, ours_lr, start, start + 1)
        reference, reference_lr = steps(theirs, theirs_opt, theirs_lr, start, start + 1)
        assert same(mine, reference), start
        assert my_lr == reference_lr, start
    assert ours_lr.get_last_lr() == [2e-3 * 0.25, 2e-4 * 0.25]  # decayed at steps 4 and 8
    untouched = ours[3].weight  # skipped on steps 0, 3, 6, 9: its step count is 6 of 10
    assert ours_opt.state[untouched]["step"].item() == theirs_opt.state[theirs[3].weight]["step"].item() == 6


def test_a_state_dict_of_either_resumes_in_the_other():
    ours, ours_opt, ours_lr, theirs, theirs_opt, theirs_lr = pair()
    steps(ours, ours_opt, ours_lr, 0, 5)
    steps(theirs, theirs_opt, theirs_lr, 0, 5)
    # each one's state, saved at step 5, continues in the other's class; both go on as an uninterrupted run
    ours2, theirs2 = copy.deepcopy(theirs), copy.deepcopy(ours)
    ours2_opt, theirs2_opt = Adam(groups(ours2), lr=1e-3), torch.optim.Adam(groups(theirs2), lr=1e-3)
    ours2_lr = StepLR(ours2_opt, step_size=4, gamma=0.5)
    theirs2_lr = torch.optim.lr_scheduler.StepLR(theirs2_opt, step_size=4, gamma=0.5)
    ours2_opt.load_state_dict(theirs_opt.state_dict())
    ours2_lr.load_state_dict(theirs_lr.state_dict())
    theirs2_opt.load_state_dict(ours_opt.state_dict())
    theirs2_lr.load_state_dict(ours_lr.state_dict())
    uninterrupted = steps(theirs, theirs_opt, theirs_lr, 5, 11)
    assert same(steps(ours2, ours2_opt, ours2_lr, 5, 11)[0], uninterrupted[0])
    assert same(steps(theirs2, theirs2_opt, theirs2_lr, 5, 11)[0], uninterrupted[0])
    assert ours2_lr.get_last_lr() == uninterrupted[1]


def test_a_state_dict_holds_tensors_and_plain_values_only():
    """Checkpoints are read with torch.load(weights_only=True): the state dict must load so."""
    import io
    ours, ours_opt, ours_lr, *_ = pair()
    steps(ours, ours_opt, ours_lr, 0, 2)
    buffer = io.BytesIO()
    torch.save({"optimizer": ours_opt.state_dict(), "scheduler": ours_lr.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["scheduler"]["last_epoch"] == 2 and len(loaded["optimizer"]["state"]) == 6


def test_training_imports_no_compiler():
    """The reason for the module: a training process never imports torch._dynamo (1.5 s of CPU)."""
    probe = ("import sys\nfrom workers.train import make_optimizer\nfrom workers.profiles import get_profile\n"
             "import torch\nnet = torch.nn.Conv2d(3, 3, 3)\noptimizer, scheduler = make_optimizer(net, get_profile('smoke'))\n"
             "net(torch.zeros(1, 3, 8, 8)).sum().backward()\noptimizer.step()\nscheduler.step()\n"
             "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
