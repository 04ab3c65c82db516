"""Hypergradient estimators: penalty (eq. 2-4), zeroth-order (eq. 14), entropy strength (Prop. 1 / eq. 33)."""
