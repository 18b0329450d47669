"""Distillation of Φ from a many-step teacher (paper Algorithm 1)."""
