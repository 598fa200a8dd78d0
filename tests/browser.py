"""A tiny Chrome DevTools Protocol client (stdlib + aiohttp): open a page in headless Chromium
and report what a person's browser would show — every image and video loaded, no console error.

Used by the report test; not a pytest module itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")

_MEDIA_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 width: i.naturalWidth})),
  videos: Array.from(document.querySelectorAll('video')).map(v => ({src: v.currentSrc, ready: v.readyState,
                                                                    error: v.error && v.error.code})),
  title: document.title})"""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


class _Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        while True:
            reply = json.loads((await self.ws.receive()).data)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    async def wait_event(self, method: str, timeout: float) -> dict:
        async def scan():
            while True:
                for e in self.events:
                    if e.get("method") == method:
                        return e
                self.events.append(json.loads((await self.ws.receive()).data))
        return await asyncio.wait_for(scan(), timeout)

    async def drain(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                self.events.append(json.loads((await asyncio.wait_for(self.ws.receive(), left)).data))
            except asyncio.TimeoutError:
                return


def _console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            out.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


async def _inspect(chromium: str, url: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="vcr-chromium-") as profile:
        args = [chromium, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
                "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            ws_url = None
            while ws_url is None:
                line = (await asyncio.wait_for(proc.stderr.readline(), timeout)).decode(errors="replace")
                if not line:
                    raise RuntimeError("chromium exited before opening its DevTools port")
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                ws_url = m.group(1) if m else None
            async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
                cdp = _Cdp(ws)
                target = (await cdp.call("Target.createTarget", {"url": "about:blank"}))["targetId"]
                session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
                for domain in ("Page", "Runtime", "Log"):
                    await cdp.call(f"{domain}.enable", session=session)
                await cdp.call("Page.navigate", {"url": url}, session=session)
                await cdp.wait_event("Page.loadEventFired", timeout)
                await cdp.drain(1.0)  # late console messages, animation frames
                value = (await cdp.call("Runtime.evaluate", {"expression": _MEDIA_JS, "returnByValue": True},
                                        session=session))["result"]["value"]
                result = json.loads(value)
                result["errors"] = _console_errors(cdp.events)
                return result
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


def inspect_page(path: Path, *, chromium: str | None = None, timeout: float = 60.0) -> dict:
    """{images: [{src, complete, width}], videos: [{src, ready, error}], title, errors: [str]}."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError(f"no Chromium found (tried {', '.join(CHROMIUM_NAMES)})")
    return asyncio.run(_inspect(chromium, Path(path).resolve().as_uri(), timeout))
