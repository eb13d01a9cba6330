"""K-space numerics: centered FFTs, coils, preprocessing (numpy).

Import the submodules directly (``kadapt.kspace.fft``, ``kadapt.kspace.coils``,
``kadapt.kspace.preprocess``; torch versions in ``kadapt.kspace.torch_fft``). This package file imports
nothing, so importing ``kadapt.kspace.fft`` (the gateway does) never pulls in torch or sigpy.
"""
