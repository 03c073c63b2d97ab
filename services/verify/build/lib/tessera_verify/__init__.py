"""Verify-side code shared by every service that validates tessera credentials.

This package never holds signing keys or password hashes and never imports
``tessera_auth`` (checked by ``lint-imports``).
"""
