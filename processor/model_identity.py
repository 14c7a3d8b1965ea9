"""The name and version of the model the processor serves, known without loading it."""

from __future__ import annotations


def model_identity(name: str) -> tuple[str, str]:
    """(name, version) of the named model as its results record them; no TensorFlow import.

    The version comes from processor.model's own rule (the weights file's hash suffix and
    the conversion version), so it always equals Classifier.version of a loaded model.
    """
    # processor.model imports TensorFlow only inside load_classifier.
    from processor import model

    spec = model._MODELS.get(name)
    if spec is None:
        known = ", ".join(sorted(model._MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return name, model._weights_version(spec.weights_path())
