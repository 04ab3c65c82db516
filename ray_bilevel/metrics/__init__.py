"""Upper-level metrics: Fréchet distances (Inception and domain), Inception Score, alignment, rewards."""
