"""Plots become PNG bytes and leave no figure open (a long job plots many times)."""

from __future__ import annotations

import matplotlib.pyplot as plt

from seedstory import figures


def test_a_figure_becomes_png_bytes_and_is_closed():
    figure, axis = figures.subplots(1, 1, figsize=(3, 2))
    axis.plot([0, 1], [1, 0])
    assert figure.number in plt.get_fignums()
    png = figures.png(figure, dpi=50)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    assert figure.number not in plt.get_fignums()
    assert plt.get_backend().lower() == "agg"
