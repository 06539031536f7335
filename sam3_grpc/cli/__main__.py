"""`python -m sam3_grpc.cli` runs the `sam3-grpc` command."""

import sys

from sam3_grpc.cli import main

sys.exit(main())
