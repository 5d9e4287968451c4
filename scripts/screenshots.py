"""Screenshots of a logdir in TensorBoard, as a reviewer checks it, taken with headless Chromium:

    python scripts/screenshots.py logs/replication --out screenshots

starts ``tensorboard`` on 127.0.0.1 only (``--port``, default 6123), waits until it serves the runs, and writes one
PNG per tab (`TABS`: Time Series, Scalars, HParams table, Images, Text) with ``chromium --headless --screenshot``;
with the ``websocket-client`` package (``pip install websocket-client``) also the HParams tab's parallel
coordinates view, clicked through Chromium's DevTools protocol. Without Chromium (``apt-get install -y chromium``)
it says so and exits 0: the check is skipped, not failed. Exit 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TABS = {
    "timeseries": "#timeseries",
    "scalars": "#scalars",
    "hparams_table": "#hparams",
    "images": "#images",
    "text": "#text",
}
WINDOW = "1600,1000"
PARALLEL_TAB = (907, 95)  # the HParams tab's "Parallel Coordinates View" at WINDOW (its views live in shadow DOM)


def browser() -> Optional[str]:
    """The first headless-capable browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def serve(logdir: Path, port: int, timeout: float = 180.0) -> subprocess.Popen:
    """A tensorboard on 127.0.0.1:`port`, once it lists the runs' scalars."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=10) as r:
                if json.loads(r.read()):
                    time.sleep(3)  # let it finish loading the last runs
                    return server
        except OSError:
            pass
        time.sleep(1)
    server.terminate()
    raise RuntimeError(f"tensorboard did not serve {logdir} within {timeout:.0f} s")


def screenshot(chromium: str, url: str, out: Path, budget_ms: int = 15000) -> None:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={out}",
            f"--window-size={WINDOW}",
            f"--virtual-time-budget={budget_ms}",
            url,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )


def _devtools(chromium: str, port: int) -> tuple[subprocess.Popen, Any]:
    import websocket  # the optional "screenshots" extra

    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
            f"--window-size={WINDOW}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(60):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages:
                return proc, websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("chromium's DevTools endpoint did not come up")


def clicked_screenshot(chromium: str, url: str, clicks: list[tuple[int, int]], out: Path, port: int) -> None:
    """A screenshot of `url` after clicking, in turn, at each point of `clicks` (CSS pixels)."""
    proc, ws = _devtools(chromium, port)
    calls = iter(range(1, 10**6))

    def call(method: str, **params: Any) -> dict:
        ident = next(calls)
        ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == ident:
                return reply.get("result", {})

    try:
        call("Page.enable")
        width, height = (int(v) for v in WINDOW.split(","))
        call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        call("Page.navigate", url=url)
        time.sleep(10)
        for x, y in clicks:
            for kind in ("mousePressed", "mouseReleased"):
                call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
            time.sleep(5)
        out.write_bytes(base64.b64decode(call("Page.captureScreenshot", format="png")["data"]))
    finally:
        ws.close()
        proc.terminate()
        proc.wait(timeout=30)


def take(logdir: Path, out: Path, port: int) -> list[str]:
    """Every screenshot (see the module docstring); returns what was written or skipped, a line each."""
    chromium = browser()
    if chromium is None:
        return ["skipped: no chromium on PATH (apt-get install -y chromium)"]
    out.mkdir(parents=True, exist_ok=True)
    server = serve(logdir, port)
    lines = []
    try:
        base = f"http://127.0.0.1:{port}/"
        for name, fragment in TABS.items():
            screenshot(chromium, base + fragment, out / f"{name}.png")
            lines.append(str(out / f"{name}.png"))
        try:
            import websocket  # noqa: F401
        except ImportError:
            return lines + ["skipped hparams_parallel: pip install websocket-client to click through the views"]
        target = out / "hparams_parallel.png"
        clicked_screenshot(chromium, base + "#hparams", [PARALLEL_TAB], target, port + 1)
        lines.append(str(target))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/screenshots.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="what to open in TensorBoard, e.g. logs/replication")
    parser.add_argument("--out", type=Path, default=Path("screenshots"), help="folder of the PNGs")
    parser.add_argument("--port", type=int, default=6123, help="tensorboard's port on 127.0.0.1 (default 6123)")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        parser.error(f"{args.logdir} is not a folder")
    if not 1024 <= args.port <= 65534:
        parser.error(f"--port {args.port} must be between 1024 and 65534")
    print("\n".join(take(args.logdir, args.out, args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
