"""Screenshots of a logdir in TensorBoard, as a reviewer checks it, taken with headless Chromium:

    python scripts/screenshots.py logs/replication/notebook --out docs/img --prefix tb-
    python scripts/screenshots.py logs/factorial/full/_report --out docs/img --prefix tb-answer- --tabs text images

starts ``tensorboard`` on 127.0.0.1 only (``--port``, default 6123), waits until it serves the runs, and writes one
PNG per tab (`TABS`: Time Series as a sweep's printed URL opens it, Scalars, HParams table and its parallel
coordinates view, Images, Text; ``--tabs`` picks some) with headless Chromium, driven through its DevTools protocol
(``pip install websocket-client``), which waits in real time for the charts to draw. Without Chromium (``apt-get
install -y chromium``) or websocket-client it says so and exits 0: the check is skipped, not failed. Exit 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from ablations.report import board

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TABS = {
    "timeseries": board.CELL_COLOURS,  # a cell's seeds in one colour, smoothing off
    "scalars": "#scalars&_smoothingWeight=0",
    "hparams_table": "#hparams",
    "images": "#images",
    "text": "#text",
}
WINDOW = "1600,1000"
PARALLEL = "hparams_parallel"
PARALLEL_TAB = (907, 95)  # the HParams tab's "Parallel Coordinates View" at WINDOW (its views live in shadow DOM)


def browser() -> Optional[str]:
    """The first headless-capable browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def serve(logdir: Path, port: int, timeout: float = 180.0) -> subprocess.Popen:
    """A tensorboard on 127.0.0.1:`port`, once it lists the runs."""
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
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=10) as r:
                if json.loads(r.read()):
                    time.sleep(3)  # let it finish loading the last runs
                    return server
        except OSError:
            pass
        time.sleep(1)
    server.terminate()
    raise RuntimeError(f"tensorboard did not serve {logdir} within {timeout:.0f} s")


def _chromium(path: str) -> list[str]:
    """Headless Chromium that talks to nothing but the page it is given, in a profile of its own."""
    return [
        path,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ]


def _devtools(chromium: str, port: int) -> tuple[subprocess.Popen, Any]:
    import websocket  # the optional "screenshots" extra

    proc = subprocess.Popen(
        [
            *_chromium(chromium),
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


def take(logdir: Path, out: Path, port: int, tabs: list[str], prefix: str = "") -> list[str]:
    """The screenshots of `tabs` (names of `TABS` and `PARALLEL`, see the module docstring), each written to
    ``out/<prefix><name>.png``; returns what was written or skipped, a line each."""
    chromium = browser()
    if chromium is None:
        return ["skipped: no chromium on PATH (apt-get install -y chromium)"]
    try:
        import websocket  # noqa: F401
    except ImportError:
        return ["skipped: pip install websocket-client (the shots are taken through Chromium's DevTools protocol)"]
    out.mkdir(parents=True, exist_ok=True)
    server = serve(logdir, port)
    lines = []
    try:
        base = f"http://127.0.0.1:{port}/"
        for name in tabs:
            target = out / f"{prefix}{name}.png"
            if name == PARALLEL:
                clicked_screenshot(chromium, base + TABS["hparams_table"], [PARALLEL_TAB], target, port + 1)
            else:
                clicked_screenshot(chromium, base + TABS[name], [], target, port + 1)
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
    parser.add_argument("--prefix", default="", help="starts each PNG's name, e.g. tb-")
    parser.add_argument(
        "--tabs", nargs="+", choices=[*TABS, PARALLEL], default=[*TABS, PARALLEL], help="which tabs (default: all)"
    )
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        parser.error(f"{args.logdir} is not a folder")
    if not 1024 <= args.port <= 65534:
        parser.error(f"--port {args.port} must be between 1024 and 65534")
    print("\n".join(take(args.logdir, args.out, args.port, args.tabs, args.prefix)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
