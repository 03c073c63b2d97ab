"""tessera's resource service: the protected part of a site, run as N replicas behind nginx.

It validates credentials with ``tessera_verify`` only; it never holds signing
keys or password hashes (``lint-imports`` checks that it never imports
``tessera_auth``).
"""
