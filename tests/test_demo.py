"""The Gradio demo end to end, in headless Chromium driven by Playwright.

Needs the ``demo`` and ``test-browser`` extras (gradio, playwright) and a Chromium binary (Debian's ``chromium``
package); skips with the reason otherwise. Playwright drives the system Chromium (``executable_path``): no browser is
ever downloaded. The server binds 127.0.0.1 on a free port, in this process (so the test can also check the
server-side sessions), and generates in worker processes, as ``streamgen demo`` does.

A screenshot is written to ``test-artifacts/demo.png`` (or ``$STREAMGEN_TEST_ARTIFACTS/demo.png``).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from streamgen.resources import pipeline_path

REPO = Path(__file__).resolve().parents[1]
TINY = pipeline_path("tiny-random")
ARTIFACTS = Path(os.environ.get("STREAMGEN_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PROMPT_A = "a red circle drifting left over a blue backdrop"
PROMPT_B = "a yellow square drifting right over a green backdrop"
TIMEOUT_MS = 30_000

# gradio 6's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio")


def _chromium() -> str | None:
    """The system Chromium: $STREAMGEN_CHROMIUM if set, else /usr/bin/chromium or `chromium` on the PATH."""
    override = os.environ.get("STREAMGEN_CHROMIUM")
    candidates = [override] if override else ["/usr/bin/chromium", shutil.which("chromium")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(pipeline, workers: int, concurrency: int, queue_size: int):
    """Serve ``pipeline`` as `streamgen demo` does (the model in worker processes, the web server in this one):
    yields (url, registry)."""
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test-browser]')")
    if _chromium() is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    from streamgen.demo.app import build_demo, launch_demo
    from streamgen.demo.generation import ProcessGeneration
    from streamgen.demo.session import DemoLimits

    generation = ProcessGeneration(pipeline, workers=workers, threads=1)
    try:
        demo, registry = build_demo(generation, DemoLimits(max_frames_per_run=2000), concurrency=concurrency,
                                    queue_size=queue_size)
        port = _free_port()
        launch_demo(demo, "127.0.0.1", port, block=False, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", registry
        finally:
            demo.close(verbose=False)
            registry.close_all()
    finally:
        generation.close()


@pytest.fixture(scope="module")
def server():
    yield from _serve(TINY, workers=2, concurrency=2, queue_size=8)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # launch() gives the browser a fresh temporary profile (user data dir), deleted when it closes.
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _open(browser, url):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#sg-start")
    # Record every frame the page shows (the <img> is re-rendered per frame), with its index in the stream.
    page.evaluate(
        """() => {
            window.__srcs = []; window.__shown = [];
            const seen = () => { const i = document.querySelector('#sg-frame');
                                 if (i && i.src !== window.__srcs[window.__srcs.length - 1]) {
                                     window.__srcs.push(i.src); window.__shown.push([+i.dataset.frame, i.src]); } };
            new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                              attributeFilter: ['src']});
        }"""
    )
    return context, page


def _shown(page) -> int:
    return page.evaluate("() => window.__srcs.length")


def _wait_new_frames(page, n: int) -> None:
    """Wait until the page shows ``n`` more frames (the image src changes ``n`` times)."""
    target = _shown(page) + n
    page.wait_for_function(f"() => window.__srcs.length >= {target}")


def _stat(page, key: str) -> str:
    return page.inner_text(f'#sg-stats td[data-key="{key}"]').strip()


def _wait_stat(page, key: str, predicate: str) -> None:
    page.wait_for_function(
        f"""() => {{ const td = document.querySelector('#sg-stats td[data-key="{key}"]');
                     return td !== null && ({predicate})(td.innerText.trim()); }}"""
    )


def _start(page, prompt: str, seed: int = 0) -> None:
    page.fill("#sg-prompt textarea", prompt)
    page.fill("#sg-seed input", str(seed))
    page.click("#sg-start")


def _screenshot_on_failure(name: str, *pages) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(pages):
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}-failure-{i}.png"), full_page=True)
        except Exception:
            pass


def _wait_closed(registry, session_ids, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while any(s in registry for s in session_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(s in registry for s in session_ids), "closing the tab did not free its session"


def test_stream_switch_stop_resume_and_download(server, browser, tmp_path):
    from streamgen.video_io import read_video

    url, registry = server
    before = set(registry.ids())
    context, page = _open(browser, url)
    try:
        _start(page, PROMPT_A, seed=3)
        _wait_new_frames(page, 2)
        restart = _shown(page)
        _start(page, PROMPT_A, seed=0)  # Start while streaming: a new stream (seed 0) replaces the running one
        _wait_stat(page, "cache preset / seed", "t => t === 'rolling / 0'")
        # The frame count starts again: some frame shown after the click has a lower index than the one before it.
        page.wait_for_function(
            f"() => window.__shown.some(([i], k) => k >= {max(restart, 1)} && i < window.__shown[k - 1][0])"
        )
        _wait_new_frames(page, 1)
        first = page.get_attribute("#sg-frame", "src")
        assert first.startswith("data:image/png;base64,")
        _wait_new_frames(page, 2)  # the image changed at least twice more: frames stream in as they are generated
        assert len(set(page.evaluate("() => window.__srcs"))) >= 3
        assert _stat(page, "prompt") == PROMPT_A
        assert int(_stat(page, "KV cache").split()[0].replace(",", "")) > 0

        # Switch the prompt live (hard cut): later chunks carry the new prompt and frames keep coming.
        page.fill("#sg-prompt textarea", PROMPT_B)
        page.get_by_label("cut").check()
        page.click("#sg-switch")
        _wait_stat(page, "prompt", f"t => t === {PROMPT_B!r}")
        _wait_new_frames(page, 2)

        # Stop: no more frames. Resume: the same stream continues (chunk numbers go on, not from 0).
        page.click("#sg-stop")
        _wait_stat(page, "state", "t => t === 'stopped'")  # shown once the run has ended
        shown = _shown(page)
        chunk, frame = (int(page.get_attribute("#sg-frame", f"data-{k}")) for k in ("chunk", "frame"))
        time.sleep(1.0)
        assert _shown(page) == shown, "frames kept coming after Stop"
        page.click("#sg-resume")
        _wait_new_frames(page, 2)
        assert int(page.get_attribute("#sg-frame", "data-chunk")) >= chunk
        # The stream's frame count goes on from where it stopped (a new stream would start again at 1). Exactly
        # frame + 1, unless the page coalesced two updates into one render (tests/test_demo_session.py checks
        # that every frame is shown once).
        assert frame < page.evaluate(f"() => window.__shown[{shown}][0]") <= frame + 3
        assert _stat(page, "prompt") == PROMPT_B

        page.click("#sg-stop")
        _wait_stat(page, "state", "t => t === 'stopped'")
        frames = int(_stat(page, "chunks / frames").split("/")[1])
        page.click("#sg-save")
        link = page.locator("#sg-mp4 a[download]").first
        link.wait_for()
        with page.expect_download() as info:
            link.click()
        out = tmp_path / "demo.mp4"
        info.value.save_as(out)
        video = read_video(out)
        assert video.ndim == 4 and video.shape[1:] == (32, 32, 3)
        # Every frame but the newest, which ffmpeg holds back until the next one arrives.
        assert video.shape[0] == frames - 1

        page.click("#sg-resume")  # streaming again for the screenshot (and the tab then closes mid-run)
        _wait_new_frames(page, 12)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        (session_id,) = set(registry.ids()) - before
        session_dir = registry.get(session_id).dir
        assert session_dir.is_dir()
    except BaseException:
        _screenshot_on_failure("demo", page)
        raise
    finally:
        context.close()
    _wait_closed(registry, [session_id])  # the tab's unload event freed the stream and its files
    assert not session_dir.exists()


def _decode(src: str) -> np.ndarray:
    import cv2

    png = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), dtype=np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1]  # the frame at its own size: the page scales it up


def _pipe():
    from streamgen import StreamingVideoPipeline

    pipe = StreamingVideoPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(pipe, prompt: str, seed: int, frames: int) -> np.ndarray:
    import torch

    stream = pipe.stream(prompt, cache="rolling", generator=torch.Generator().manual_seed(seed))
    chunks = []
    while sum(len(c) for c in chunks) < frames:
        chunks.append(next(stream).frames[0])
    return np.concatenate(chunks)


def test_two_browser_sessions_get_independent_streams(server, browser):
    url, registry = server
    before = set(registry.ids())
    (ctx_a, page_a), (ctx_b, page_b) = _open(browser, url), _open(browser, url)
    try:
        _start(page_a, PROMPT_A, seed=0)
        _start(page_b, PROMPT_B, seed=0)  # same seed: only the prompt differs
        for page in (page_a, page_b):
            page.wait_for_function("() => window.__srcs.length >= 6")
        page_a.click("#sg-stop")
        _wait_stat(page_a, "state", "t => t === 'stopped'")
        assert _stat(page_a, "prompt") == PROMPT_A
        assert _stat(page_b, "prompt") == PROMPT_B
        shown_a = page_a.evaluate("() => window.__shown")
        shown_b = page_b.evaluate("() => window.__shown.slice(0, 6)")
        assert not {s for _, s in shown_a} & {s for _, s in shown_b}, "a session was shown another's frames"

        # Each page shows exactly its own stream: what pipe.stream() gives for its prompt and seed, even though
        # both streams were generated at the same time by the same worker processes.
        pipe = _pipe()
        for shown, prompt in ((shown_a, PROMPT_A), (shown_b, PROMPT_B)):
            reference = _reference(pipe, prompt, 0, max(i for i, _ in shown))
            for index, src in shown:
                diff = np.abs(_decode(src).astype(int) - reference[index - 1].astype(int))
                assert diff.max() <= 2, f"{prompt!r}: frame {index} is not its stream's frame"

        ids = set(registry.ids()) - before
        assert len(ids) == 2
        sessions = [registry.get(i) for i in ids]
        assert sessions[0].stream is not sessions[1].stream
        assert {s.stats.prompt for s in sessions} == {PROMPT_A, PROMPT_B}
        assert any(s.running for s in sessions)  # B still streams when its tab closes
    except BaseException:
        _screenshot_on_failure("two-sessions", page_a, page_b)
        raise
    finally:
        ctx_a.close()
        ctx_b.close()
    _wait_closed(registry, ids)
    assert not any(s.dir.exists() for s in sessions)


def test_streaming_keeps_no_component_per_frame(server):
    """For every gr.skip() an update sends, gradio builds a new component into the session's state. The demo sends
    none while it streams: it used to skip the stats and the plot in 2 of every 3 frames, and gradio kept ~2
    components per chunk, a served demo's memory growing with every frame shown."""
    import gc

    from gradio.components import HTML
    from gradio_client import Client

    url, registry = server
    before = set(registry.ids())

    def components() -> int:
        gc.collect()
        return sum(type(o) is HTML for o in gc.get_objects())  # type(), not isinstance(): no proxy is asked

    client = Client(url, verbose=False)
    counts = []
    try:
        job = client.submit(PROMPT_A, "rolling", 0, api_name="/start")
        for n, _ in enumerate(job, 1):
            if n in (12, 60):
                counts.append(components())
            if n == 60:
                break
        client.predict(api_name="/stop_1")
    finally:
        client.close()
        for session_id in set(registry.ids()) - before:
            registry.close(session_id)
    assert counts[0] == counts[1], f"{counts[1] - counts[0]} HTML components were kept over 48 frames"


CAMERA_PROMPT = "a top-down flight over red, yellow and blue shapes scattered on a gray ground"


@pytest.fixture(scope="module")
def camera_server():
    yield from _serve(pipeline_path("shapeworld-cam-tiny"), workers=1, concurrency=1, queue_size=4)


def _shifts(srcs: list[str]) -> np.ndarray:
    """The measured image shift (dx, dy) between consecutive shown frames (rows where one could be read)."""
    from streamgen.bench.camera_follow import measured_shift

    frames = [_decode(s) for s in srcs]
    pairs = [measured_shift(a, b, "gray") for a, b in zip(frames, frames[1:])]
    return np.array([p for p in pairs if p is not None]).reshape(-1, 2)


def test_the_arrow_keys_steer_a_camera_models_stream(camera_server, browser):
    """The camera holds still until a key: then the picture slides the other way at the steering speed."""
    url, _ = camera_server
    context, page = _open(browser, url)
    try:
        page.wait_for_selector("#sg-steer-right")
        _start(page, CAMERA_PROMPT, seed=1)
        _wait_new_frames(page, 12)
        still = _shifts(page.evaluate("() => window.__srcs")[-9:])
        page.click("#sg-frame-box")  # keys go to the page, not to the prompt field
        page.keyboard.press("ArrowRight")
        shown = _shown(page)
        _wait_new_frames(page, 15)
        moving = _shifts(page.evaluate("() => window.__srcs")[shown + 6:])  # from the chunk after the next on
        page.keyboard.press(" ")
        page.screenshot(path=str(ARTIFACTS / "demo-steering.png"))
        assert len(still) >= 4 and np.abs(np.median(still, 0)).max() < 0.75, still
        assert len(moving) >= 4, moving
        dx, dy = np.median(moving, 0)
        assert dx < -1.0 and abs(dy) < 1.0, moving  # moving right: the ground slides left
    except BaseException:
        _screenshot_on_failure("steering", page)
        raise
    finally:
        context.close()
