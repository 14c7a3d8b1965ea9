"""imagepipe: event-driven image recognition on AWS."""

__version__ = "0.1.0"
