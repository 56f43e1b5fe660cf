"""Dissection: which units of a layer match which classes (measures, engine, results, report)."""
