"""The README's camera GIF: python scripts/camera_gif.py [--pipeline shapeworld-cam-tiny] [--out assets/camera-revisit.gif]

One held-out straight revisit flight of ``streamgen bench revisit`` (9 true frames of a place, 8 chunks away, the
same poses back): the truth, the camera model with its geometric memory (coverage retrieval), and the same model
remembering only its 4 newest frames, side by side, 4x larger. A white bar under a panel marks the true frames."""

import argparse

import imageio.v3 as iio
import numpy as np
import torch

from streamgen.bench.revisit import MODEL_MEMORIES, _model_flight
from streamgen.camera_control import CameraTrack
from streamgen.loading import open_pipeline
from streamgen.world.camera import ground_depth

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--pipeline", default="shapeworld-cam-tiny")
parser.add_argument("--out", default="assets/camera-revisit.gif")
parser.add_argument("--trial", type=int, default=0)
parser.add_argument("--scale", type=int, default=4)
args = parser.parse_args()

torch.set_num_threads(1)
pipe = open_pipeline(args.pipeline)
context = 9
world, flight = _model_flight(args.trial, context, int(pipe.config.chunk_frames), "straight", 8)
panels = [flight.frames]
for memory in ("coverage", "none"):
    retrieval, pool, k, keep_first, eviction = MODEL_MEMORIES[memory]
    track = CameraTrack(flight.intrinsics, flight.poses, depth_fn=ground_depth, memory_frames=pool, anchors=k,
                        retrieval=retrieval, keep_first=keep_first, eviction=eviction)
    stream = pipe.stream(world.caption, video=flight.frames[:context], camera=track,
                         num_frames=len(flight) - context, generator=torch.Generator().manual_seed(args.trial))
    panels.append(np.concatenate([flight.frames[:context]] + [c.frames[0] for c in stream]))
frames = []
for i in range(len(flight)):
    row = []
    for panel in panels:
        frame = np.repeat(np.repeat(panel[i], args.scale, 0), args.scale, 1)
        bar = np.zeros((4, frame.shape[1], 3), np.uint8)
        if i < context:
            bar[:] = 255
        row += [np.concatenate([frame, bar]), np.zeros((frame.shape[0] + 4, 4, 3), np.uint8)]
    frames.append(np.concatenate(row[:-1], 1))
iio.imwrite(args.out, np.stack(frames), duration=1000 / float(pipe.config.fps), loop=0)
print(f"{args.out}: {len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]}: truth | memory | 4 newest")
