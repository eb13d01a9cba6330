"""Offline data: package-shipped anatomy, the multi-coil simulator and ``build_dataset``.

Submodules: ``anatomy`` (``Anatomy``, ``AnatomySource``, tissue maps), ``sources`` (the package-shipped
sources: nilearn MNI152, mricron Colin27 / macaque, pydicom-data, dipy, nibabel), ``coils_sim`` (birdcage
sensitivities, coil-correlated noise), ``simulator`` (``simulate_volume``), ``build`` (``build_dataset``),
``manifest`` (``DatasetManifest``, ``load_manifest``); task data (issue 8): ``labels`` (tissue labels,
``LabelledAnatomy``), ``task_sources``, ``lesions``, ``task_sim``, ``tasks`` (``load_task_split``); cine data
(issue 5): ``cine_motion`` (cardiac-like motion), ``cine_sim`` (``simulate_cine_volume``), ``cine_build``
(``build_cine_dataset``), ``cine`` (``read_cine``, ``list_cine``, ``CineManifest``). This
file imports nothing, so importing one submodule (e.g. ``kadapt.data.manifest`` in a client) does not pull
in scipy, sigpy or the MRD writer.
"""
