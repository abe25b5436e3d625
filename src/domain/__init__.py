"""The pure core: keys, tiers, rate-limit policy, usage records, errors. No I/O, no frameworks."""
