"""Frozen teachers for distillation."""
