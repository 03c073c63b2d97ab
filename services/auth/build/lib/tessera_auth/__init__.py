"""tessera's auth service: the only process that holds signing keys and password hashes."""
