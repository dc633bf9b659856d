"""Helpers shared by every recipe: arguments, data, labels, metrics, training and reports."""
