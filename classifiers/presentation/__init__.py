"""Presentation: plots, metrics.json and report.md, heatmap images and the HTML report.
It draws results the workflows computed; it computes no predictions itself."""
