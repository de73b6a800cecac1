"""Evaluation on fixed candidate sets (method.md section 3)."""
