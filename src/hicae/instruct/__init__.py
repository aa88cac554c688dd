"""Instruction data without labels: questions made from a text, answered by the base model reading it."""
