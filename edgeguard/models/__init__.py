"""Models: which files a model needs, where they live, how to get them.

`manifest` reads and validates the manifests (`models/<name>.yaml`), `store` finds and verifies a
model's files in `<models_dir>/<name>/`, and `fetch` puts them there (download or `--from DIR`).
"""

from edgeguard.models.manifest import (
    DEFAULT_MODEL,
    Manifest,
    ModelFile,
    builtin_manifest_dir,
    find_manifest,
    load_manifests,
)
from edgeguard.models.provision import fetch
from edgeguard.models.store import digest, file_path, resolve, verify_file

__all__ = [
    "DEFAULT_MODEL",
    "Manifest",
    "ModelFile",
    "builtin_manifest_dir",
    "digest",
    "fetch",
    "file_path",
    "find_manifest",
    "load_manifests",
    "resolve",
    "verify_file",
]
