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


def wait_in_page(url: str, expression: str, *, timeout: float = 60.0) -> object:
    """Open `url` in headless Chromium and evaluate the JavaScript `expression` every half second until it gives
    a truthy value (returned) or `timeout` passes (AssertionError with the page's text). Speaks the DevTools
    protocol over a websocket (aiohttp, which Ray brings), for pages that render after their own fetches."""
    import asyncio
    import json
    import time
    from pathlib import Path

    import aiohttp
    assert CHROMIUM, "chromium is not installed; `make browser` installs it"
    profile = tempfile.mkdtemp(prefix="acla-chromium-")
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1400,1000",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def drive():
        port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.time() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                page = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                ids = iter(range(1, 1_000_000))

                async def call(method, **params):
                    number = next(ids)
                    await socket.send_json({"id": number, "method": method, "params": params})
                    while True:
                        message = json.loads((await socket.receive()).data)
                        if message.get("id") == number:
                            return message.get("result", {})

                await call("Page.navigate", url=url)
                deadline, text = time.time() + timeout, ""
                while time.time() < deadline:
                    value = (await call("Runtime.evaluate", expression=expression, returnByValue=True)).get("result", {})
                    if value.get("value"):
                        return value["value"]
                    text = (await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                       returnByValue=True))["result"].get("value", "")
                    await asyncio.sleep(0.5)
                raise AssertionError(f"{expression!r} stayed false on {url}; the page shows: {text[:1500]!r}")

    try:
        return asyncio.run(drive())
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
