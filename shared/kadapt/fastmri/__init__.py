"""fastMRI HDF5 files (``kadapt.fastmri.files``): ``FastMriVolume``, ``read_fastmri``, ``write_fastmri``.

This package file imports nothing, so importing it never pulls in h5py.
"""
