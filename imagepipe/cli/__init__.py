"""The `imagepipe` command and the operator tools behind it; a composition root."""
