#!/usr/bin/env python
"""Screenshot of the web demo (demo/app.py) as a user sees it, for demo/README.md: starts the app on a
free localhost port, opens it in headless Chromium (Debian's, driven by Playwright), picks a
ToyWorld example, segments it with the default vocabulary and saves the page.

    python tools/web_demo_screenshot.py --output docs/images/web_demo.png \\
        -- --config-file configs/toy/sed_toy.yaml [--weights W] [--opts ...]

Everything after ``--`` goes to demo/app.py (default: the toy SED config, which loads the
quickstart's model when ``make quickstart`` has run). The PNG is palette-quantised to stay small.
The browser helpers here are also those of tests/test_web_demo.py.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(REPO, "demo", "app.py")
# As root in a container, on a closed network: no sandbox, GPU, QUIC or background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def chromium_path() -> Optional[str]:
    """$OVSS_D2_CHROMIUM when set, else Debian's Chromium; None when that is not there."""
    if os.environ.get("OVSS_D2_CHROMIUM"):
        candidates = [os.environ["OVSS_D2_CHROMIUM"]]
    else:
        candidates = ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((p for p in candidates if p and os.access(p, os.X_OK)), None)


def launch_browser(playwright):
    """Headless Chromium with a fresh profile (Playwright's own temporary user-data dir)."""
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("No Chromium: apt-get install -y chromium (or set OVSS_D2_CHROMIUM).")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(app_args: List[str], port: int, log_path: str, timeout: float = 300.0) -> subprocess.Popen:
    """demo/app.py on 127.0.0.1:port, once it answers; its output goes to ``log_path``."""
    import urllib.request

    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, APP, *app_args, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"demo/app.py exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise TimeoutError(f"demo/app.py did not serve within {timeout:.0f} s:\n{open(log_path).read()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def open_page(browser, port: int, width: int = 1280, height: int = 900):
    """A new tab on the app at ``port``, once the page has been built."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#segment")
    page.wait_for_selector("#status [data-testid=status-tracker]", state="attached")
    return page


def wait_for_answer(page, action, timeout_ms: float = 120_000) -> str:
    """Do ``action()`` (a click, an upload) and wait until the server has answered the event it
    starts; returns the status line. Every event of the page writes to the status box, whose
    progress tracker shows while the request runs and hides after: the answer is awaited on that
    tracker, as the text may not change (the same message twice, or none)."""
    page.evaluate("""() => {
        const tracker = document.querySelector('#status [data-testid=status-tracker]');
        window.ovssBusySeen = false;
        if (window.ovssObserver) window.ovssObserver.disconnect();
        window.ovssObserver = new MutationObserver(() => {
            if (!tracker.classList.contains('hide')) window.ovssBusySeen = true; });
        window.ovssObserver.observe(tracker, {attributes: true});
    }""")
    action()
    page.wait_for_function("""() => window.ovssBusySeen
        && document.querySelector('#status [data-testid=status-tracker]').classList.contains('hide')""",
                           timeout=timeout_ms)
    return page.inner_text("#status").strip()


def upload(page, path: str) -> str:
    """Put a file in the page's upload box (replacing the one there); returns the status line."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        wait_for_answer(page, clear.click)
    return wait_for_answer(page, lambda: page.set_input_files("#upload input[type=file]", path))


def pick_example(page, index: int = 0) -> str:
    """Click example ``index`` of the page's gallery; returns the status line once it is read."""
    return wait_for_answer(page, lambda: page.click(f"#examples button[aria-label^='Thumbnail {index + 1} of']"))


def run_segmentation(page, timeout_ms: float = 120_000) -> str:
    """Press Segment; returns the status line of the answer."""
    return wait_for_answer(page, lambda: page.click("#segment"), timeout_ms)


def save_small_png(src: str, dst: str, colours: int = 128) -> None:
    """The screenshot as a palette PNG (a page of flat colours keeps its look at a fraction of the size)."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1:] if "--" in argv else ["--config-file", "configs/toy/sed_toy.yaml"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(REPO, "docs", "images", "web_demo.png"))
    p.add_argument("--example", type=int, default=0, help="which ToyWorld example to segment")
    p.add_argument("--width", type=int, default=1280, help="browser window width")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    from playwright.sync_api import sync_playwright

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="web_demo_screenshot_")
    raw, log = os.path.join(tmp, "page.png"), os.path.join(tmp, "app.log")
    port = free_port()
    proc = start_app(app_args, port, log)
    try:
        with sync_playwright() as pw:
            browser = launch_browser(pw)
            page = open_page(browser, port, width=args.width)
            pick_example(page, args.example)
            status = run_segmentation(page)
            if not status.startswith("Done"):
                raise RuntimeError(f"The page answered: {status}")
            page.wait_for_selector("#overlay img")
            page.wait_for_timeout(500)  # images finish drawing
            page.screenshot(path=raw, full_page=True)
            browser.close()
    finally:
        stop_app(proc)
    save_small_png(raw, args.output)
    shutil.rmtree(tmp)  # kept when something failed: app.log says what
    print(f"{args.output}: {os.path.getsize(args.output) / 1024:.0f} kB ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
