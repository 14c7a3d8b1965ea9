"""The ImageNet-1k classes as leaves of WordNet's tree: their parents, scores up the tree, words.

`imagepipe/core/data/imagenet_hierarchy.json` is made by `scripts/make_hierarchy.py` from
WordNet 3.0 (pruned of nodes nobody searches for). Softmax outputs are exclusive, so a node's
score is the sum of its classes' probabilities: the probability the image is any kind of it.

A custom model may ship a parents file beside its labels (`NAME.parents.json`, see
`catalog.parents_file` and `read_parents_file`; `imagepipe train --nested` writes one);
without one its labels are flat.
"""

from __future__ import annotations

import bisect
import functools
import importlib.resources
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from imagepipe.core.records.indexes import label_key as word_key
from imagepipe.core.records.parts import Category, Label

logger = logging.getLogger(__name__)

HIERARCHY_RESOURCE = "data/imagenet_hierarchy.json"

# Labels below this, but the top one, are not searchable: a 1% runner-up is not what the
# picture shows, and each word is a write.
SEARCH_FLOOR = 0.05


class HierarchyError(ValueError):
    """A hierarchy file that cannot be used with the model's labels."""


@dataclass(frozen=True)
class Node:
    """A kept node above the leaves: its name (distinct among nodes), search words, classes."""

    id: str
    name: str
    words: tuple[str, ...]
    leaves: tuple[int, ...]


class Hierarchy:
    """Leaves (class IDs) with their parents, nodes with their classes, and a word index."""

    def __init__(self, leaf_words: Sequence[Sequence[str]],
                 leaf_parents: Sequence[Sequence[str]],
                 nodes: dict[str, tuple[str, Sequence[str]]]) -> None:
        """`nodes` maps each node's ID to its name and search words."""
        if len(leaf_words) != len(leaf_parents):
            raise HierarchyError(f"{len(leaf_words)} leaves but {len(leaf_parents)} parent lists")
        members: dict[str, list[int]] = {node: [] for node in nodes}
        for class_id, parents in enumerate(leaf_parents):
            for parent in parents:
                if parent not in members:
                    raise HierarchyError(f"class {class_id} has the unknown parent {parent!r}")
                members[parent].append(class_id)
        self.leaf_words = [tuple(word_key(w) for w in words) for words in leaf_words]
        # A node's name answers a search too: it is what the result shows.
        self.nodes = {node_id: Node(node_id, name, tuple(dict.fromkeys(
                          word_key(w) for w in (name, *words))), tuple(members[node_id]))
                      for node_id, (name, words) in nodes.items() if members[node_id]}
        self.leaf_parents = [tuple(p for p in parents if p in self.nodes)
                             for parents in leaf_parents]
        # Most specific first: fewer classes, then the order the file gives.
        self._order = sorted(self.nodes, key=lambda n: len(self.nodes[n].leaves))
        self._words = sorted({w for words in self.leaf_words for w in words}
                             | {w for node in self.nodes.values() for w in node.words})

    @functools.cache  # noqa: B019 - one hierarchy per model, kept for the process's life
    def _matrix(self) -> np.ndarray:
        """Nodes by classes, 1 where the class is under the node: scores are one product."""
        import numpy as np

        matrix = np.zeros((len(self._order), len(self.leaf_words)), dtype=np.float32)
        for row, node_id in enumerate(self._order):
            matrix[row, list(self.nodes[node_id].leaves)] = 1.0
        return matrix

    @property
    def classes(self) -> int:
        return len(self.leaf_words)

    def parents(self, class_id: int) -> list[str]:
        """The names of a class's kept ancestors, nearest first."""
        return [self.nodes[p].name for p in self.leaf_parents[class_id]]

    def scores(self, probabilities: np.ndarray, min_score: float) -> list[tuple[Node, float]]:
        """Every node scoring at least `min_score` with its score, most specific first.

        Specific first because a general node always scores at least what any node below it
        does: "domestic cat 0.92" says more than "animal 0.96".
        """
        if not self._order:
            return []
        import numpy as np  # here: the front searches words and never scores, without numpy

        scores = self._matrix() @ np.asarray(probabilities, dtype=np.float32)
        return [(self.nodes[node_id], min(1.0, float(score)))
                for node_id, score in zip(self._order, scores, strict=True)
                if score >= min_score]

    def categories(self, probabilities: np.ndarray, top_k: int, min_score: float
                   ) -> list[Category]:
        """The `top_k` most specific nodes scoring at least `min_score` (see `scores`)."""
        if top_k < 1:
            return []
        return [Category(node.name, score)
                for node, score in self.scores(probabilities, min_score)[:top_k]]

    def words_of_leaf(self, class_id: int) -> tuple[str, ...]:
        return self.leaf_words[class_id]

    def suggest(self, prefix: str, limit: int = 10) -> list[str]:
        """Words of the hierarchy that start with `prefix`, alphabetically (a bisect, no scan)."""
        key = word_key(prefix)
        if not key:
            return []
        start = bisect.bisect_left(self._words, key)
        found: list[str] = []
        for word in self._words[start:start + limit]:
            if not word.startswith(key):
                break
            found.append(word)
        return found


def search_words(hierarchy: Hierarchy | None, labels: Iterable[Label],
                 nodes: Iterable[tuple[Node, float]]) -> dict[str, float]:
    """Every word a result answers to, with the best score of what carries it.

    A label answers to its own name and, with a hierarchy, to its class's synonyms (the top
    label always, the others from `SEARCH_FLOOR`); a scored node (`Hierarchy.scores`) to its
    name and words.
    """
    found: dict[str, float] = {}

    def add(words: Iterable[str], score: float) -> None:
        for word in words:
            key = word_key(word)
            if key and score > found.get(key, -1.0):
                found[key] = score

    for rank, label in enumerate(labels):
        if rank and label.score < SEARCH_FLOOR:
            continue
        add([label.label], label.score)
        if hierarchy is not None and 0 <= label.class_id < hierarchy.classes:
            add(hierarchy.words_of_leaf(label.class_id), label.score)
    for node, score in nodes:
        add(node.words, score)
    return found


def _from_json(data: dict[str, Any]) -> Hierarchy:
    try:
        leaves = data["leaves"]
        nodes = {node_id: (node["name"], node["words"]) for node_id, node in data["nodes"].items()}
        return Hierarchy([leaf["words"] for leaf in leaves], [leaf["parents"] for leaf in leaves],
                         nodes)
    except (KeyError, TypeError) as exc:
        raise HierarchyError(f"not a hierarchy file: missing {exc}") from None


@functools.lru_cache(maxsize=1)
def imagenet_hierarchy() -> Hierarchy:
    """The shipped ImageNet-1k hierarchy, read once."""
    resource = importlib.resources.files("imagepipe.core") / HIERARCHY_RESOURCE
    return _from_json(json.loads(resource.read_text(encoding="utf-8")))


def read_parents_file(path: Path, labels: Sequence[str]) -> Hierarchy:
    """A custom model's parents file: ``{"parents": {"label": ["nearest", ..., "farthest"]}}``.

    Each label is a leaf with the parents named; a parent's only word is its name.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        parents = data["parents"]
        if not isinstance(parents, dict) or not all(
                isinstance(v, list) and all(isinstance(p, str) and p.strip() for p in v)
                for v in parents.values()):
            raise TypeError("parents must map each label to a list of names")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HierarchyError(f"{path}: {exc}") from None
    unknown = sorted(set(parents) - set(labels))
    if unknown:
        raise HierarchyError(f"{path}: labels not in the model: {', '.join(unknown[:5])}")
    chains = [[word_key(p) for p in parents.get(label, [])] for label in labels]
    nodes = {name: (name, [name]) for chain in chains for name in chain}
    return Hierarchy([[label] for label in labels], chains, nodes)
