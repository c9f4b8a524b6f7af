"""Per-example signals: cross-validation (out-of-sample probabilities, memorization), cleanlab label
quality, TracIn self-influence, robust-versus-natural signals, and their canary-calibrated combination."""
