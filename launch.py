#!/usr/bin/env python3
"""Start the Stable Diffusion studio. `python launch.py --help` lists every option."""
import sys

from webui.cli import main

if __name__ == "__main__":
    sys.exit(main())
