# Ember's code-interpreter template: runs in every Python kernel at start (IPython startup file).
# It imports the data libraries once (so a sandbox restored from the template's snapshot has them
# loaded) and registers E2B's result formats: matplotlib figures also give `e2b/chart`
# (e2b-charts) and pandas DataFrames `e2b/data`, which the SDKs show as `result.chart` and
# `result.data`.
import json as _json

import matplotlib as _mpl
import matplotlib.pyplot as _plt  # noqa: F401
import numpy as _np  # noqa: F401
import pandas as _pd
from IPython import get_ipython as _get_ipython
from IPython.core.formatters import BaseFormatter as _BaseFormatter
from matplotlib.figure import Figure as _Figure
from traitlets import ObjectName as _ObjectName, Unicode as _Unicode

_mpl.rcParams["figure.max_open_warning"] = 0


def _figure_chart(fig):
    try:
        from e2b_charts import chart_figure_to_dict

        return chart_figure_to_dict(fig)
    except Exception:
        return None


def _dataframe_data(df):
    # Through pandas' JSON writer: numpy scalars, NaN (null) and timestamps (ISO) come out as JSON.
    return {str(c): _json.loads(df[c].to_json(orient="values", date_format="iso")) for c in df.columns}


class _E2BDataFormatter(_BaseFormatter):
    format_type = _Unicode("e2b/data")
    print_method = _ObjectName("_repr_e2b_data_")
    _return_type = (dict,)


class _E2BChartFormatter(_BaseFormatter):
    format_type = _Unicode("e2b/chart")
    print_method = _ObjectName("_repr_e2b_chart_")
    _return_type = (dict,)


_ip = _get_ipython()
if _ip is not None:
    _formatters = _ip.display_formatter.formatters
    _formatters["e2b/data"] = _E2BDataFormatter(parent=_ip.display_formatter)
    _formatters["e2b/data"].for_type(_pd.DataFrame, _dataframe_data)
    _formatters["e2b/chart"] = _E2BChartFormatter(parent=_ip.display_formatter)
    _formatters["e2b/chart"].for_type(_Figure, _figure_chart)
    _ip.colors = "NoColor"
