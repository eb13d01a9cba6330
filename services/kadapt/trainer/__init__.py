"""The offline trainer service: ``kadapt train recon`` (issue 3).

- :mod:`kadapt.trainer.config` — YAML configs beside each model kind, CLI overrides, ``TrainConfig``;
- :mod:`kadapt.trainer.data` — the slice dataset (ACS scale, ACS maps, SENSE target) and per-batch masks;
- :mod:`kadapt.trainer.loop` — train / validate / checkpoint / resume, ``train_recon`` (the entry point);
- :mod:`kadapt.trainer.bundle` — ONNX + TorchScript export and the bundle manifest.

See ``docs/trainer.md``. This package imports torch; no other service imports it.
"""
