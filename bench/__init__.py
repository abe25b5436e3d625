"""The benchmark of issue 5: `python -m bench` (or `make bench`); `python -m bench --smoke` for the tests."""
