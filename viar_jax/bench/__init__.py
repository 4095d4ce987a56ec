"""Measurements: sampling throughput and memory (VAR vs VIAR), JFB training memory."""
