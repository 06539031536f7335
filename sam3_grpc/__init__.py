"""sam3-grpc: a gRPC service for Meta's SAM 3 image segmentation and video tracking.

Importing this package (or its client and generated stubs) never imports torch.
"""

__version__ = "0.1.0"
