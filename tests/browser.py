"""Headless Chromium (the distribution's package, installed by `make test`) for the tests that load a page."""
import os
import shutil
import subprocess
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                   reason="no chromium here (make test installs it)")


def rendered_dom(url: str, wait_ms: int = 8000) -> str:
    """The page's DOM after its scripts ran (Chromium's own --dump-dom), loaded from `url`."""
    assert CHROMIUM, "chromium is not installed; `make browser` installs it"
    profile = tempfile.mkdtemp(prefix="acla-chromium-")
    try:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
