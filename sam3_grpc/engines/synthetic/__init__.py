"""The synthetic engine: segments by colour, tracks regions by overlap; no neural network.

See `engine.py` for the rules. For load tests and end-to-end tests that check masks land on the
right pixels of the right frame.
"""

from sam3_grpc.engines.synthetic.colours import COLOURS, colour_from_text
from sam3_grpc.engines.synthetic.engine import SyntheticEngine

__all__ = ["COLOURS", "SyntheticEngine", "colour_from_text"]
