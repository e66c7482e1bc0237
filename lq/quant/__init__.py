"""Quantization in three tiers: pure functions, straight-through autograd, thin modules."""
