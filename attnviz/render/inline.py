"""A matplotlib figure that shows itself in a notebook, with nothing imported or switched on by hand."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from attnviz.render.fonts import font_context


class InlineFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` with a PNG representation for IPython.

    A figure made without pyplot has no display in a fresh Jupyter kernel until ``%matplotlib
    inline`` registers one; ``_repr_png_`` lets the notebook draw it anyway. Nothing global is
    changed: the figure is drawn on its own Agg canvas.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with font_context():
            self.savefig(buffer, format="png", dpi=self.dpi)
        return buffer.getvalue()
