"""The carrier partnership: operators, bundles, rating, and signed events to operators."""
