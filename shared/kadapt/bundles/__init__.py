"""Model bundles: a strict manifest plus sha256-verified files in a Triton-like repository.

``<repository>/<name>/<version>/manifest.json`` with ``model.onnx`` / ``model.pt`` / ``mask.npy``;
:func:`load_bundle` verifies every file before use, :func:`write_bundle` computes the digests;
:class:`~kadapt.bundles.sampler_masks.SamplerMasks` gives the plan a sampler bundle (``mnet`` /
``fixed-mask``) serves for a scan (that module reaches ONNX Runtime; the package itself does not).
See ``docs/bundles.md``.
"""

from kadapt.bundles.fixed_masks import served_fixed_plan
from kadapt.bundles.manifest import (
    MANIFEST_FILENAME,
    SCHEMA_VERSION,
    BundleGeometry,
    BundleKind,
    Manifest,
    TensorSpec,
    natural_version_key,
    sha256_bytes,
    sha256_file,
    utc_now,
)
from kadapt.bundles.repository import (
    Bundle,
    BundleRef,
    list_bundle_refs,
    list_bundles,
    load_bundle,
    read_manifest,
    verify_files,
    write_bundle,
)

__all__ = [
    "MANIFEST_FILENAME",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleGeometry",
    "BundleKind",
    "BundleRef",
    "Manifest",
    "TensorSpec",
    "list_bundle_refs",
    "list_bundles",
    "load_bundle",
    "natural_version_key",
    "read_manifest",
    "served_fixed_plan",
    "sha256_bytes",
    "sha256_file",
    "utc_now",
    "verify_files",
    "write_bundle",
]
