"""Framework-free recon domain: classic reconstructions, the method registry, the queue worker."""
