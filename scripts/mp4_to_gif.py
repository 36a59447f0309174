"""Turn an mp4 into an upscaled GIF for the README: python scripts/mp4_to_gif.py out.mp4 assets/demo.gif --scale 4"""

import argparse

import imageio.v3 as iio
import numpy as np

from streamgen.video_io import read_video

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("mp4")
parser.add_argument("gif")
parser.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling factor")
parser.add_argument("--fps", type=float, default=16.0)
args = parser.parse_args()

frames = read_video(args.mp4)
frames = np.repeat(np.repeat(frames, args.scale, axis=1), args.scale, axis=2)
iio.imwrite(args.gif, frames, duration=1000 / args.fps, loop=0)
print(f"{args.gif}: {len(frames)} frames, {frames.shape[2]}x{frames.shape[1]}")
