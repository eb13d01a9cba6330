"""The gateway's framework-free domain: sessions and their store, ingest, planning, completion, images."""
