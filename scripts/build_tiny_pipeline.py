"""Write the random-weights tiny pipeline used by the README example before a trained model exists.

    python scripts/build_tiny_pipeline.py streamgen/pipelines/tiny-random
"""

import argparse

from streamgen.tiny import save_tiny_pipeline

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("out")
parser.add_argument("--vae", choices=["pixel", "wan"], default="pixel")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
print(save_tiny_pipeline(args.out, vae=args.vae, seed=args.seed))
