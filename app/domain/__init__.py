"""The pure core: events, features, the fold, access rules. No I/O, no framework."""
