"""The README's demo screenshot: the demo on the embedded model, streaming for a few seconds, in headless Chromium.

    python scripts/demo_screenshot.py [--out assets/demo-screenshot.png] [--seconds 6]

Needs the ``demo`` and ``test-browser`` extras and a system Chromium (Debian's ``chromium``), as the browser test does.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time

PROMPT = "a yellow square drifting right over a green backdrop"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="assets/demo-screenshot.png")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the stream plays before the shot")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from streamgen.demo.app import build_demo, launch_demo
    from streamgen.loading import open_pipeline

    torch.set_num_threads(1)
    pipe = open_pipeline(None)
    pipe.set_progress_bar_config(disable=True)
    demo, registry = build_demo(pipe)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch_demo(demo, "127.0.0.1", port, block=False, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#sg-prompt textarea", PROMPT)
            page.click("#sg-start")
            page.wait_for_selector("#sg-frame")
            time.sleep(args.seconds)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        demo.close(verbose=False)
        registry.close_all()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
