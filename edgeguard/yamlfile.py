"""YAML as edgeguard reads it: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a config with
`detector:` twice would silently drop the first section. Integers written in plain
decimal digits are marked (`DecimalInt`), so a permission mode whose leading 0 was
forgotten (`440`, YAML's decimal 440, that is 0o670) can be refused, not applied.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """The same key twice in one mapping; names both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


class DecimalInt(int):
    """An integer YAML read from plain decimal digits (440, not 0440, 0o440 or 0x1b8)."""


def _construct_int(loader: UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    digits = str(node.value).replace("_", "").lstrip("+-")
    return DecimalInt(value) if digits.isdigit() and (digits == "0" or not digits.startswith("0")) else value


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
UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load(text: str) -> Any:
    """Parse one YAML document; yaml.YAMLError (DuplicateKeyError among them) on a problem."""
    return yaml.load(text, Loader=UniqueKeyLoader)
