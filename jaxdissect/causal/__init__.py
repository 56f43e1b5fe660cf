"""Causation: average causal effects of unit sets, the alpha search, and the paper's analyses."""
