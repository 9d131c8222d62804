# Run silently in every new Python kernel by ember-interpreter: rich results as E2B's
# code-interpreter template makes them (pandas DataFrames as `e2b/data`, matplotlib figures as
# `e2b/chart` through e2b-charts), and tracebacks without colours. Each part is skipped when
# its packages are missing.
def __ember_setup():
    import datetime

    ip = get_ipython()  # noqa: F821 (IPython's builtin)
    try:
        ip.run_line_magic("colors", "nocolor")
    except Exception:
        pass
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    def register(mime, type_name, fn):
        class _Formatter(BaseFormatter):
            format_type = Unicode(mime)
            print_method = ObjectName("_repr_ember_none_")
            _return_type = (dict, list, str)

        f = ip.display_formatter.formatters.get(mime)
        if f is None:
            f = _Formatter(parent=ip.display_formatter)
            ip.display_formatter.formatters[mime] = f
        f.for_type_by_name(*type_name, fn)

    try:
        import pandas  # noqa: F401

        def dataframe(df):
            result = df.to_dict(orient="list")
            for key, values in result.items():
                result[key] = [
                    v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v for v in values
                ]
            return result

        register("e2b/data", ("pandas.core.frame", "DataFrame"), dataframe)
    except Exception:
        pass
    try:
        from e2b_charts import chart_figure_to_dict

        def figure(fig):
            try:
                return chart_figure_to_dict(fig)
            except Exception:
                return None

        register("e2b/chart", ("matplotlib.figure", "Figure"), figure)
    except Exception:
        pass


__ember_setup()
del __ember_setup
