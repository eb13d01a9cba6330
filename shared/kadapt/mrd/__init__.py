"""MRD (ISMRMRD) core: the streaming codec, the XML header, MRD HDF5 files and k-space assembly.

Submodules: ``constants`` (message ids, acquisition flags, header dtypes), ``messages`` (message
dataclasses, ``AcquisitionBatch``), ``builders`` (``make_acquisition``, ``make_image_messages``),
``stream`` (codec: ``encode_message``, ``decode_stream``, ``StreamDecoder``, bulk acquisitions; re-exports
the message types and builders), ``header`` (``parse_header``, ``make_header``), ``files`` (MRD HDF5,
imports h5py), ``assemble`` (``assemble_kspace``, ``kspace_to_acquisitions``). This file imports nothing,
so importing one submodule never pulls in the others' dependencies.
"""
