"""Index queries on the local endpoint that cost what DynamoDB's do, not the table's size.

moto answers a Query on a global secondary index by walking every item of the table, sorting
the matches, then walking them again to the exclusive start key: the processor's by_content
look-up per new image and a gallery page both slowed as the table grew. `speed_up_indexes`
keeps, for each index of a table, its partitions as lists in moto's own sort order, updated on
every put, update and delete. A query then hands moto's own code only the items it would
visit: those of one partition, from the start key on, up to its Limit and one more (for the
LastEvaluatedKey). Key conditions, filters, projections, paging and order stay moto's.

Only single-attribute index keys take the short way; anything else (multi-attribute keys, the
legacy QueryFilter, a table's own key) is answered by moto as before. IMAGEPIPE_LOCAL_KEY_MAPS
=off leaves moto alone.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

OFF_VARIABLE = "IMAGEPIPE_LOCAL_KEY_MAPS"

# The attribute that holds a table's maps; rebuilt from the items when missing (a table
# restored from a backup or a snapshot, an index added). Snapshots leave it out (`set_aside`):
# a stack started with the maps off would not keep them up to date.
_MAPS = "_imagepipe_key_maps"
_narrowed = threading.local()
# moto's server answers on many threads: a map changes and is read under this lock (the maps
# live in the tables, which the snapshot pickles, so the lock lives here).
_guard = threading.RLock()


class _Bypass:
    """While on, queries take moto's own way (the maps are still kept): for comparisons."""

    on = False


_bypass = _Bypass()


@contextlib.contextmanager
def moto_queries() -> Iterator[None]:
    """Within this block, index queries are answered by moto's unpatched code."""
    _bypass.on = True
    try:
        yield
    finally:
        _bypass.on = False


@dataclass
class _Partition:
    """One partition of an index: sort keys ascending, items in the same order."""

    keys: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)

    def add(self, key: tuple[Any, ...], item: Any) -> None:
        at = bisect.bisect_right(self.keys, key)
        self.keys.insert(at, key)
        self.items.insert(at, item)

    def remove(self, key: tuple[Any, ...], item: Any) -> None:
        at = bisect.bisect_left(self.keys, key)
        while at < len(self.items) and self.items[at] is not item:
            at += 1
        if at < len(self.items):
            del self.keys[at]
            del self.items[at]


@dataclass
class _IndexMap:
    """An index's partitions, and where each item was put (its attributes change in place)."""

    hash_attr: str
    range_attr: str | None
    sort_attrs: list[str]
    partitions: dict[Any, _Partition] = field(default_factory=dict)
    placed: dict[tuple[Any, Any], tuple[Any, tuple[Any, ...], Any]] = field(default_factory=dict)

    def place(self, item: Any) -> None:
        identity = (item.hash_key, item.range_key)
        self.unplace(identity)
        attrs = item.attrs
        value = attrs.get(self.hash_attr)
        # moto's own test for membership: the hash key, and the range key if the index has one.
        if not value or (self.range_attr is not None and not attrs.get(self.range_attr)):
            return
        if any(name not in attrs for name in self.sort_attrs):
            return
        key = tuple(copy.deepcopy(attrs[name]) for name in self.sort_attrs)
        hash_value = copy.deepcopy(value)
        self.partitions.setdefault(hash_value, _Partition()).add(key, item)
        self.placed[identity] = (hash_value, key, item)

    def unplace(self, identity: tuple[Any, Any]) -> None:
        found = self.placed.pop(identity, None)
        if found is None:
            return
        hash_value, key, item = found
        partition = self.partitions[hash_value]
        partition.remove(key, item)
        if not partition.items:
            del self.partitions[hash_value]


@contextlib.contextmanager
def set_aside(tables: list[Any]) -> Iterator[None]:
    """Within this block, the tables hold no maps (for pickling them); put back after."""
    with _guard:
        kept = [(table, table.__dict__.pop(_MAPS)) for table in tables
                if _MAPS in table.__dict__]
        try:
            yield
        finally:
            for table, maps in kept:
                table.__dict__[_MAPS] = maps


def _single_key_gsi(table: Any, name: str) -> Any | None:
    """The global index of this name if its key is one hash and at most one range attribute."""
    from moto.dynamodb.models.table import GlobalSecondaryIndex

    for index in table.global_indexes:
        if index.name == name and isinstance(index, GlobalSecondaryIndex):
            hashes = [k for k in index.schema if k["KeyType"] == "HASH"]
            ranges = [k for k in index.schema if k["KeyType"] == "RANGE"]
            return index if len(hashes) == 1 and len(ranges) <= 1 else None
    return None


def _key_attrs(index: Any) -> tuple[str, str | None]:
    hash_attr = next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
    range_attr = next((k["AttributeName"] for k in index.schema if k["KeyType"] == "RANGE"),
                      None)
    return hash_attr, range_attr


def _sort_attrs(table: Any, index: Any) -> list[str]:
    """The attributes moto's Query sorts an index's matches by, as its query() builds them."""
    hash_attr, range_attr = _key_attrs(index)
    range_attrs = ([range_attr, table.range_key_attr] if range_attr is not None
                   else [table.range_key_attr or table.hash_key_attr, table.range_key_attr])
    return table._generate_attr_to_sort_by([hash_attr, table.hash_key_attr], range_attrs)


def _all_items(table: Any) -> list[Any]:
    from moto.dynamodb.models.dynamo_type import Item

    return [item for item in _ORIGINAL["all_items"](table) if isinstance(item, Item)]


def _index_map(table: Any, name: str) -> _IndexMap | None:
    """The table's map of this index, built from its items the first time it is asked for."""
    index = _single_key_gsi(table, name)
    if index is None:
        return None
    with _guard:
        return _built(table, index, name)


def _built(table: Any, index: Any, name: str) -> _IndexMap:
    maps = table.__dict__.setdefault(_MAPS, {})
    hash_attr, range_attr = _key_attrs(index)
    sort_attrs = _sort_attrs(table, index)
    found = maps.get(name)
    if found is None or (found.hash_attr, found.range_attr, found.sort_attrs) != (
            hash_attr, range_attr, sort_attrs):
        found = maps[name] = _IndexMap(hash_attr, range_attr, sort_attrs)
        for item in _all_items(table):
            found.place(item)
    return found


def _placed(table: Any, item: Any | None) -> None:
    """Put one item (new, changed or replaced) where it belongs in each map built so far."""
    if item is None:
        return
    # A map whose index changed since is rebuilt at its next query (_index_map).
    with _guard:
        for found in table.__dict__.get(_MAPS, {}).values():
            found.place(item)


def _removed(table: Any, item: Any | None) -> None:
    if item is None:
        return
    with _guard:
        for found in table.__dict__.get(_MAPS, {}).values():
            found.unplace((item.hash_key, item.range_key))


def _visited(table: Any, found: _IndexMap, partition: _Partition, query: dict[str, Any]
             ) -> list[Any]:
    """The items of a partition that moto's Query would look at, in the order it sorts them.

    From the exclusive start key on, in the query's direction, until the Limit-th item the
    range condition takes and one item more (moto sets LastEvaluatedKey on seeing it), or
    until the items the condition takes run out (they are consecutive in that order).
    """
    forward = query["scan_index_forward"] is not False
    count = len(partition.items)

    def at(position: int) -> Any:
        return partition.items[position if forward else count - 1 - position]

    start = 0
    exclusive = query.get("exclusive_start_key")
    if exclusive is not None:
        hash_attrs = [found.hash_attr, table.hash_key_attr]
        range_attrs = [found.range_attr, table.range_key_attr]
        # moto skips the items that come before or at the start key: a prefix of this order.
        low, high = 0, count
        while low < high:
            middle = (low + high) // 2
            if table._item_comes_before_dct(at(middle), exclusive, hash_attrs, range_attrs,
                                            forward):
                low = middle + 1
            else:
                high = middle
        start = low
    comparison = query.get("range_comparison")
    objects = query.get("range_objs") or []
    conditions = query.get("range_key_conditions") or []
    attr = conditions[-1][0] if conditions else found.range_attr
    limit = query.get("limit")
    visited: list[Any] = []
    taken = 0
    seen_taken = False
    for position in range(start, count):
        item = at(position)
        visited.append(item)
        if limit is not None and taken == limit:
            break
        if comparison:
            value = item.attrs.get(attr) if attr else None
            if value is not None and value.compare(comparison, objects):
                taken += 1
                seen_taken = True
            elif seen_taken:
                break
        else:
            taken += 1
    # moto reverses what it is given when the query runs backwards.
    return visited if forward else visited[::-1]


def _narrowable(table: Any, query: dict[str, Any]) -> tuple[_IndexMap, Any] | None:
    """The index map and the partition value when this query can take the short way."""
    name = query.get("index_name")
    if not name or query.get("filter_kwargs"):
        return None
    conditions = query.get("range_key_conditions") or []
    if len(conditions) > 1:
        return None
    found = _index_map(table, name)
    if found is None:
        return None
    values = dict(query.get("hash_key_conditions") or [])
    value = values.get(found.hash_attr, query.get("hash_key"))
    if value is None or set(values) - {found.hash_attr}:
        return None
    return found, value


_ORIGINAL: dict[str, Callable[..., Any]] = {}


def _query_names(function: Callable[..., Any]) -> list[str]:
    import inspect

    return list(inspect.signature(function).parameters)[1:]


def speed_up_indexes() -> bool:
    """Patch moto's Table and backend as the module says; False if moto changed shape."""
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    wanted = ("query", "put_item", "delete_item", "all_items", "_generate_attr_to_sort_by",
              "_item_comes_before_dct")
    if _ORIGINAL or not all(hasattr(Table, name) for name in wanted) or not hasattr(
            DynamoDBBackend, "update_item"):
        return bool(_ORIGINAL)
    names = [name for name in _query_names(Table.query) if name != "filter_kwargs"]
    if not {"hash_key", "range_comparison", "range_objs", "limit", "exclusive_start_key",
            "scan_index_forward", "index_name"} <= set(names):
        return False
    _ORIGINAL.update(query=Table.query, put_item=Table.put_item, delete_item=Table.delete_item,
                     all_items=Table.all_items, update_item=DynamoDBBackend.update_item)

    def all_items(self: Any) -> list[Any]:
        narrowed = getattr(_narrowed, "items", None)
        if narrowed is not None and narrowed[0] is self:
            return list(narrowed[1])
        return _ORIGINAL["all_items"](self)

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = dict(zip(names, args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        # What is left is moto's legacy QueryFilter, which takes the long way.
        bound["filter_kwargs"] = {k: v for k, v in kwargs.items() if k not in names}
        short = None if _bypass.on else _narrowable(self, bound)
        if short is None:
            return _ORIGINAL["query"](self, *args, **kwargs)
        found, value = short
        with _guard:
            partition = found.partitions.get(value)
            items = _visited(self, found, partition, bound) if partition is not None else []
        _narrowed.items = (self, items)
        try:
            return _ORIGINAL["query"](self, *args, **kwargs)
        finally:
            _narrowed.items = None

    def put_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = _ORIGINAL["put_item"](self, *args, **kwargs)
        _placed(self, item)
        return item

    def delete_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = _ORIGINAL["delete_item"](self, *args, **kwargs)
        _removed(self, item)
        return item

    def update_item(self: Any, table_name: str, *args: Any, **kwargs: Any) -> Any:
        # The item's attributes change in place: its place in each index may move.
        item = _ORIGINAL["update_item"](self, table_name, *args, **kwargs)
        _placed(self.get_table(table_name), item)
        return item

    Table.all_items = all_items
    Table.query = query
    Table.put_item = put_item
    Table.delete_item = delete_item
    DynamoDBBackend.update_item = update_item
    return True
