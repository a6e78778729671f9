"""Reporting: console tables, figures, and the HTML report."""
