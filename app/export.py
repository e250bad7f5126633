"""Chart downloads: the data as CSV, the chart as PNG or SVG (rendered on click, not on every rerun)."""

from __future__ import annotations

import altair as alt
import pandas as pd


def _spec(chart: alt.TopLevelMixin) -> str:
    # A container width has no meaning outside the page: export at a fixed width.
    return chart.properties(width=720).to_json() if isinstance(chart, (alt.Chart, alt.LayerChart)) else chart.to_json()


def png(chart) -> bytes:
    import vl_convert as vlc
    return vlc.vegalite_to_png(_spec(chart), scale=2)


def svg(chart) -> str:
    import vl_convert as vlc
    return vlc.vegalite_to_svg(_spec(chart))


def csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()
