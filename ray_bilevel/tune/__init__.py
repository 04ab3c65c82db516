"""Ray Tune layer (filled by the lead)."""
