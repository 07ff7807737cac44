"""Helpers for the whole-machine robustness tests (tests/test_fuzz_machine.py)."""
