"""Headless Chromium driven over the DevTools protocol, for the dashboard's browser test.

Debian's `chromium` (installed by `make setup`) runs with `--headless --no-sandbox --disable-gpu
--disable-background-networking --no-first-run` and `--remote-debugging-port=0`; the port it picked is
read from `DevToolsActivePort` in its profile directory. `Page` speaks the protocol over one websocket
(aiohttp's client): navigate, evaluate JavaScript, capture a screenshot. Every wait is bounded.

Test bed only: never imported by the product.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
)


class BrowserError(Exception):
    """Chromium did not start, or a DevTools command failed."""


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise BrowserError("chromium is not installed: run `make setup` (it installs Debian's chromium)")
    return found


class Page:
    """One page target's DevTools session."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send one command and wait (bounded) for its reply; events in between are dropped."""
        message_id = next(self._ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = await self.ws.receive(timeout=left)
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools socket closed during {method}: {message.type}")
            reply = json.loads(message.data)
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})  # type: ignore[no-any-return]
        raise BrowserError(f"{method}: no reply in {timeout} s")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll an expression until it is truthy (bounded); returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(BrowserError):  # the page may be between documents
                value = await self.evaluate(expression)
                if value:
                    return value
            await asyncio.sleep(0.1)
        raise BrowserError(f"{expression!r} still {value!r} after {timeout} s")

    async def screenshot(self, path: Path, width: int = 1280) -> None:
        """A PNG of the whole page at `width` CSS pixels."""
        height = int(await self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium(
    profile: Path, width: int = 1280, height: int = 900, start_timeout: float = 60.0
) -> AsyncIterator[Page]:
    """Start headless Chromium with a fresh profile under `profile`; yield its first page; stop it."""
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile / "chromium.log").open("wb")
    process = subprocess.Popen(
        [
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(profile)},  # its caches and crash dumps stay in the profile
    )
    try:
        port = await _devtools_port(profile, process, start_timeout)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20) as ws:
                tab = Page(ws)
                await tab.send("Page.enable")
                await tab.send("Runtime.enable")
                yield tab
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (profile / "chromium.log").read_text(errors="replace")[-2000:]
            raise BrowserError(f"chromium exited with {process.returncode}: {tail}")
        with contextlib.suppress(OSError, ValueError):
            return int(marker.read_text().split()[0])
        await asyncio.sleep(0.05)
    raise BrowserError(f"chromium wrote no DevToolsActivePort in {timeout} s")
