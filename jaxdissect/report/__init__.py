"""Outputs a person reads: unit image strips, SVG charts and the self-contained HTML report."""
