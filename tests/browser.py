"""A real browser for the tests: Debian's chromium, headless, driven over its DevTools protocol
(a websocket, websocket-client) as a person would: open a page, click a link by its text, read what
the page shows, take a screenshot. Every wait is for the browser's own event, bounded against hangs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

from . import servers

# A bound against a hang, not a timing: each step normally takes milliseconds.
HANG = 60.0


def have_chromium() -> bool:
    return shutil.which("chromium") is not None


class Browser:
    def __init__(self, profile: Path):
        self.port = servers.free_port()
        self.process = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",  # as root, Chromium refuses its sandbox
                "--disable-gpu",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={profile}",
                "--window-size=1000,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.socket = websocket.create_connection(self._page_socket(), timeout=HANG, suppress_origin=True)
        self.counter = 0
        self.call("Page.enable")

    def _page_socket(self) -> str:
        deadline = time.monotonic() + HANG
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as answer:
                    pages = [p for p in json.load(answer) if p.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)

    def call(self, method: str, **params) -> dict:
        self.counter += 1
        self.socket.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.counter:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, event: str) -> dict:
        while True:
            message = json.loads(self.socket.recv())
            if message.get("method") == event:
                return message.get("params", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def click(self, text: str) -> None:
        """Click the link whose text is text, with the mouse, and wait for the page it opens."""
        box = self.evaluate(
            "(() => { const a = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === "
            + json.dumps(text)
            + "); if (!a) return null; a.scrollIntoView(); const r = a.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise AssertionError(f"no link {text!r} on {self.evaluate('location.href')}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        self.wait_for("Page.loadEventFired")

    @property
    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=HANG)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
