"""Drives a running local stack from outside: the rows 1-6 demonstration, its faults, the
outage probe."""
