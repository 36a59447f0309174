"""``python -m streamgen.convert --format ... --ckpt ... --out ...`` (the same as ``streamgen convert``)."""

import sys

from .cli import main

sys.exit(main())
