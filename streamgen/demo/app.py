"""The Gradio app: live streaming with prompt switches. Needs the ``demo`` extra (``pip install -e ".[demo]"``).

Streaming: "Start" / "Resume" are generator callbacks; every frame of every chunk is yielded as it is ready (an
``<img>`` with a PNG data URI at the frame's own size, scaled up by the page with nearest neighbour), paced at the
pipeline's fps. Nothing is written to gradio's file cache per frame. Per-session state lives in a :class:`~streamgen.demo.session.SessionRegistry` keyed
by gradio's session hash; the page's ``unload`` event (fired when the tab closes or reloads) frees it at once, and
idle sessions are reaped.
"""

from __future__ import annotations

import gc
import html
import ipaddress
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a local demo

import gradio as gr  # noqa: E402

from ..cache.presets import available_presets  # noqa: E402
from ..prompts import shorten  # noqa: E402
from ..transitions import TRANSITIONS  # noqa: E402
from .session import DemoLimits, DemoSession, SessionRegistry, SessionsFull, frame_data_uri  # noqa: E402

__all__ = ["build_demo", "launch_demo"]

DEFAULT_PROMPT = "a red circle drifting left over a blue backdrop"
CAMERA_PROMPT = "a top-down flight over red, yellow and blue shapes scattered on a gray ground"  # a camera model's
CSS = """
#sg-frame-box {display: flex; justify-content: center; align-items: center; min-height: 400px;
               background: #111; border-radius: 8px;}
#sg-frame {image-rendering: pixelated; width: 384px; height: 384px; max-width: 100%; object-fit: contain;}
#sg-placeholder {color: #aaa; font-size: 14px; padding: 24px; text-align: center;}
#sg-stats table {width: 100%; font-size: 13px; border-collapse: collapse;}
#sg-stats th {text-align: left; font-weight: 600; padding: 2px 8px 2px 0; white-space: nowrap;}
#sg-stats td {padding: 2px 0; font-variant-numeric: tabular-nums; word-break: break-word;}
#sg-plot svg {width: 100%; height: auto; background: #fafafa; border-radius: 6px; font: 11px sans-serif;}
"""
PLOT_CHUNKS = 120  # the latency chart shows this many recent chunks
# A camera model's steering: the arrow keys and WASD press the steering buttons (not while typing in a field).
STEERING_BUTTONS = (("left", "\u25c0"), ("up", "\u25b2"), ("down", "\u25bc"), ("right", "\u25b6"),
                    ("stop", "\u25a0"))
STEERING_KEYS_JS = """() => {
  const keys = {ArrowLeft: "left", ArrowUp: "up", ArrowDown: "down", ArrowRight: "right", a: "left", w: "up",
                s: "down", d: "right", " ": "stop"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) return;
    const key = keys[event.key];
    const button = key && document.querySelector(`#sg-steer-${key}`);
    if (button) { event.preventDefault(); button.click(); }
  });
}"""


def _placeholder(text: str = "press Start to stream") -> str:
    return f'<div id="sg-placeholder">{html.escape(text)}</div>'


def _frame_html(uri: str, chunk: int, frame: int) -> str:
    return f'<img id="sg-frame" alt="live frame" data-chunk="{chunk}" data-frame="{frame}" src="{uri}">'


def _stats_html(session: DemoSession | None) -> str:
    if session is None:
        rows = [("state", "idle")]
    else:
        r = session.readout()
        latency = f"{r['last_latency_ms']:.1f} ms" if r["last_latency_ms"] is not None else "-"
        rows = [
            ("state", r["state"]),
            ("prompt", shorten(r["prompt"])),  # the stats go out with every frame: never the whole prompt
            ("cache preset / seed", f"{r['preset']} / {r['seed']}"),
            ("chunks / frames", f"{r['chunks']} / {r['frames']}"),
            ("display FPS", f"{r['display_fps']:.1f}"),
            ("generation FPS", f"{r['generation_fps']:.1f}"),
            ("KV cache", f"{r['cache_bytes']:,} bytes"),
            ("transformer time", f"{r['transformer_seconds']:.2f} s"),
            ("last chunk latency", latency),
        ]
        if r["pending_switch"]:
            rows.append(("switching to", f"{shorten(r['pending_switch'][0])} ({r['pending_switch'][1]}), next chunk"))
    body = "".join(
        f'<tr><th>{html.escape(k)}</th><td data-key="{html.escape(k)}">{html.escape(str(v))}</td></tr>' for k, v in rows
    )
    return f"<table>{body}</table>"


def _latency_svg(session: DemoSession | None) -> str:
    """The recent chunks' generation latency as an inline SVG line, with the real-time budget (one chunk's playing
    time) dashed: above it, a stream falls behind. A string, so that it costs nothing to send again unchanged."""
    width, height, pad = 480, 200, 28
    points = list(session.stats.latencies_ms)[-PLOT_CHUNKS:] if session is not None else []
    budget = session.config.chunk_frames / session.config.fps * 1000.0 if session is not None else 0.0
    top = max([budget, *(ms for _, ms in points)], default=1.0) * 1.1 or 1.0

    def y(ms: float) -> float:
        return height - pad - (height - 2 * pad) * ms / top

    peak = f" (max {max(ms for _, ms in points):.0f})" if points else ""
    parts = [f'<text x="{pad}" y="16">per-chunk latency, ms{peak}</text>']
    if budget:
        parts.append(f'<line x1="{pad}" x2="{width - 4}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" stroke="#c33" '
                     f'stroke-dasharray="4 3"/><text x="{width - 4}" y="{y(budget) - 4:.1f}" text-anchor="end" '
                     f'fill="#c33">real time: {budget:.0f} ms</text>')
    if points:
        step = (width - pad - 4) / max(len(points) - 1, 1)
        line = " ".join(f"{pad + i * step:.1f},{y(ms):.1f}" for i, (_, ms) in enumerate(points))
        parts.append(f'<polyline points="{line}" fill="none" stroke="#2a6fdb" stroke-width="1.5"/>'
                     f'<text x="{pad}" y="{height - 8}">chunk {points[0][0]}</text>'
                     f'<text x="{width - 4}" y="{height - 8}" text-anchor="end">chunk {points[-1][0]}</text>')
    return f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="per-chunk latency">{"".join(parts)}</svg>'


def _refused(err: Exception | str) -> gr.Error:
    """A user's request the demo refuses (a too-long prompt, a full server, a bad session file) as gradio's error
    popup: its text escaped (gradio renders it as HTML), and one line in the server's log instead of gradio's
    traceback per refusal (a user sending a refused prompt every second wrote ~100 KB of tracebacks a minute)."""
    message = str(err)
    print(f"demo: refused: {shorten(message, 300)}", file=sys.stderr, flush=True)
    return gr.Error(html.escape(message), print_exception=False)


def build_demo(generation, limits: DemoLimits | None = None, *, concurrency: int | None = None,
               queue_size: int = 16):
    """The Blocks app and its session registry. ``generation``: a pipeline (chunks generated in threads of this
    process) or a :mod:`~streamgen.demo.generation` host such as worker processes. ``concurrency`` streams play at
    once (default: one worker per session, ``limits.max_sessions``, so a session never waits for another's run to
    end; the rest wait in a queue of at most ``queue_size`` events); quick controls (stop, switch, save) bypass the
    queue."""
    limits = limits or DemoLimits()
    concurrency = concurrency or limits.max_sessions
    registry = SessionRegistry(generation, limits)
    config = registry.generation.config
    presets = available_presets()
    default_preset = config.default_cache if config.default_cache in presets else presets[0]

    def play(session: DemoSession):
        # Every frame's update sends all three outputs as strings. The stats and the chart change once per chunk and
        # are sent again unchanged in between (gradio sends an unchanged output as an empty diff). Not gr.skip(): for
        # every skip gradio builds a new component into the session's state, and it kept ~2 of them per chunk.
        chunk = frame = stats = plot = None
        try:
            for update in session.run():
                if update.chunk_index != chunk:
                    chunk, stats, plot = update.chunk_index, _stats_html(session), _latency_svg(session)
                frame = _frame_html(frame_data_uri(update.frame), update.chunk_index, update.frame_index)
                yield frame, stats, plot
        except ValueError as err:
            raise _refused(err) from None
        yield gr.skip() if frame is None else frame, _stats_html(session), _latency_svg(session)

    def start(prompt, preset, seed, request: gr.Request):
        try:
            session = registry.get_or_create(request.session_hash)
            session.start(prompt, preset, int(seed or 0))
        except (SessionsFull, ValueError) as err:
            raise _refused(err) from None
        yield from play(session)

    def resume(request: gr.Request):
        session = registry.get(request.session_hash)
        if session is None or session.stream is None:
            raise _refused("no stream to resume: press Start")
        yield from play(session)

    def stop(request: gr.Request):
        session = registry.get(request.session_hash)
        if session is None or not session.running:
            return _stats_html(session)
        session.stop()
        return gr.skip()  # the run's own last update says "stopped" once its last chunk is written

    def switch(prompt, mode, request: gr.Request):
        session = registry.get(request.session_hash)
        try:
            if session is None:
                raise ValueError("no stream yet: press Start first")
            session.switch(prompt, mode)
        except (ValueError, RuntimeError) as err:  # a bad prompt, or a stream that has ended
            raise _refused(err) from None
        return _stats_html(session)

    def steer(key: str):
        def handler(request: gr.Request):
            session = registry.get(request.session_hash)
            try:
                if session is None:
                    raise ValueError("no stream yet: press Start first")
                session.move(key)
            except (ValueError, RuntimeError) as err:
                raise _refused(err) from None
        return handler

    def save(request: gr.Request):
        session = registry.get(request.session_hash)
        path = session.snapshot_mp4() if session is not None else None
        if path is None:
            gr.Warning("no frames in the mp4 yet")
            return None
        return str(path)

    def save_session(request: gr.Request):
        session = registry.get(request.session_hash)
        try:
            if session is None:
                raise ValueError("no stream yet: press Start first")
            return str(session.save_session())
        except ValueError as err:
            raise _refused(err) from None

    def restore_session(file, request: gr.Request):
        if file is None:
            return gr.skip()
        try:
            session = registry.get_or_create(request.session_hash)
            session.restore_session(file)
        except (SessionsFull, ValueError, OSError) as err:
            raise _refused(err) from None
        return _stats_html(session)

    def unload(request: gr.Request):
        registry.close(request.session_hash)

    # System fonts: the default theme would fetch Google Fonts, which an offline machine cannot reach.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    camera = bool(getattr(registry.generation, "camera", False))
    with gr.Blocks(title="streamgen live", analytics_enabled=False, delete_cache=(300, 900)) as demo:
        gr.Markdown(
            "## streamgen: live video with prompt switches\n"
            "Start a stream, then type a new prompt and press **Switch now**: it takes effect at the next chunk. "
            + ("Steer the camera with the arrow keys or WASD (space stops it). " if camera else "")
            + f"Pipeline: {config.height}x{config.width} at {config.fps:g} fps, "
            f"{config.chunk_frames} latent frames per chunk."
        )
        with gr.Row():
            with gr.Column(scale=3):
                frame = gr.HTML(_placeholder(), elem_id="sg-frame-box", js_on_load=None)
                plot = gr.HTML(_latency_svg(None), elem_id="sg-plot", js_on_load=None)
            with gr.Column(scale=2):
                prompt = gr.Textbox(CAMERA_PROMPT if camera else DEFAULT_PROMPT, label="prompt", lines=2,
                                    elem_id="sg-prompt",
                                    max_length=config.max_prompt_chars)
                with gr.Row():
                    preset = gr.Dropdown(presets, value=default_preset, label="cache preset", elem_id="sg-preset")
                    seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="sg-seed")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="sg-start")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="sg-stop")
                    resume_btn = gr.Button("Resume", elem_id="sg-resume")
                with gr.Row():
                    mode = gr.Radio(list(TRANSITIONS), value="smooth", label="transition", elem_id="sg-mode")
                    switch_btn = gr.Button("Switch now", elem_id="sg-switch")
                steering = []
                if camera:
                    with gr.Row():
                        for key, label in STEERING_BUTTONS:
                            steering.append((key, gr.Button(label, elem_id=f"sg-steer-{key}", min_width=40)))
                stats = gr.HTML(_stats_html(None), elem_id="sg-stats", js_on_load=None)
                save_btn = gr.Button("Save mp4 so far", elem_id="sg-save")
                mp4 = gr.File(label="mp4", interactive=False, height=90, elem_id="sg-mp4")
                with gr.Row():
                    save_session_btn = gr.Button("Save session", elem_id="sg-save-session")
                    session_file = gr.File(label="session (download it; upload one to restore it, then Resume)",
                                           file_types=[".safetensors"], height=90, elem_id="sg-session")

        outputs = [frame, stats, plot]
        # Start while streaming restarts: a quick, unqueued stop frees this session's worker first (a click on a
        # button whose generator is still running would otherwise be dropped, trigger_mode "once").
        # postprocess=False: every output is a finished HTML string, and gradio would otherwise hand each of a frame's
        # 3 outputs to a worker thread of its own to pass it through unchanged.
        start_btn.click(stop, None, stats, queue=False, show_progress="hidden", trigger_mode="multiple").then(
            start, [prompt, preset, seed], outputs, concurrency_id="stream", show_progress="hidden",
            trigger_mode="multiple", postprocess=False,
        )
        resume_btn.click(resume, None, outputs, concurrency_id="stream", show_progress="hidden", postprocess=False)
        stop_btn.click(stop, None, stats, queue=False, show_progress="hidden")
        switch_btn.click(switch, [prompt, mode], stats, queue=False, show_progress="hidden")
        for key, button in steering:
            button.click(steer(key), None, None, queue=False, show_progress="hidden")
        save_btn.click(save, None, mp4, queue=False)
        save_session_btn.click(save_session, None, session_file, queue=False)
        session_file.upload(restore_session, session_file, stats, queue=False)
        demo.unload(unload)
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    demo.streamgen_registry = registry
    demo.streamgen_theme = theme
    demo.streamgen_js = STEERING_KEYS_JS if camera else None
    return demo, registry


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch_demo(demo, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, quiet: bool = False):
    """Serve ``demo`` on ``host:port`` (never shared through a tunnel). ``block=False`` returns once it serves."""
    if not is_loopback(host):
        print(f"warning: serving the demo on {host}: anyone who can reach this address can use it", flush=True)
    served = demo.launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=quiet,
        show_error=True, theme=getattr(demo, "streamgen_theme", None), css=CSS, js=getattr(demo, "streamgen_js", None),
        footer_links=[], ssr_mode=False,
        enable_monitoring=False, mcp_server=False, pwa=False,
    )
    if block:  # this call serves until Ctrl-C: it owns the process (an embedding caller's garbage collector is theirs)
        freeze_startup_objects()
        demo.block_thread()
    return served


def freeze_startup_objects() -> None:
    """Exempt everything alive now (torch, gradio, the model, the app) from Python's cyclic garbage collector.

    A full collection scans every tracked object while holding the GIL, so it stops every session's stream at once:
    in the served demo it came every ~37 s and took 430-520 ms (2.3-2.8 chunk times), the worst frame gaps of 4
    sessions over HTTP. Objects made while serving are still collected as before."""
    gc.collect()
    gc.freeze()
