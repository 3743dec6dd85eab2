"""Evaluation callbacks (ADV², noise, transferability, squeezing, image grids) and the report writer."""
