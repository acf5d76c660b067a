"""A mutation fuzzer of every parser a user's file reaches (tests/test_fuzz.py, benchmarks/fuzz_parsers.py)."""
