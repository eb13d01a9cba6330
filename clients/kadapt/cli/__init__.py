"""The ``kadapt`` command line."""
