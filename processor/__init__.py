"""Image classification worker: model serving for the image pipeline."""
