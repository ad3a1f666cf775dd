"""A signal whose exception Python drops still cancels: the handler's exception raised inside a `__del__` (as a
garbage collection in SQLAlchemy can run one) is printed as "Exception ignored" and lost; the job's check between
its steps (runtime/errors.py raise_if_cancelled) raises it again. Each case in its own interpreter, so the test
process keeps its own signal handlers."""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from orchestrator.runtime.errors import Terminated, install_signal_handlers, raise_if_cancelled
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a suite started in the background ignores Ctrl-C
    install_signal_handlers()

    class Collected:
        def __del__(self):
            os.kill(os.getpid(), signal.{name})
            for _ in range(1000):  # the handler runs here, inside __del__, where its exception is dropped
                pass

    Collected()
    print("went on", flush=True)
    try:
        raise_if_cancelled()
    except Terminated:
        print("terminated")
    except KeyboardInterrupt:
        print("interrupted")
    else:
        print("finished")
""")


@pytest.mark.parametrize("name,word", [("SIGTERM", "terminated"), ("SIGINT", "interrupted")])
def test_a_signal_dropped_inside_del_still_cancels(name, word):
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" in done.stderr  # the failure mode itself: the exception was dropped
    assert done.stdout.split() == ["went", "on", word]


def test_no_signal_no_cancel():
    done = subprocess.run([sys.executable, "-c", "from orchestrator.runtime.errors import raise_if_cancelled\n"
                           "raise_if_cancelled(); print('finished')"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "finished", done.stderr
