"""YAML as edgeguard reads it: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a config with
`detector:` twice would silently drop the first section.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """The same key twice in one mapping; names both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in first:
                raise DuplicateKeyError(
                    None, None, f"duplicate key {key!r} (first on line {first[key]})", key_node.start_mark
                )
            first[key] = line
        except TypeError:  # an unhashable key: let the SafeLoader report it its own way
            break
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text: str) -> Any:
    """Parse one YAML document; yaml.YAMLError (DuplicateKeyError among them) on a problem."""
    return yaml.load(text, Loader=UniqueKeyLoader)
