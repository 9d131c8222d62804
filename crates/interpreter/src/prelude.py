# Run silently in every new Python kernel by ember-interpreter: rich results as E2B's
# code-interpreter template makes them (pandas DataFrames as `e2b/data`, matplotlib figures as
# `e2b/chart` through e2b-charts; these replace formatters an IPython start-up file registered),
# tracebacks without colours, and output flushed by the MiB. Nothing is imported before it is
# needed.
def __ember_setup():
    ip = get_ipython()  # noqa: F821 (IPython's builtin)
    try:
        ip.run_line_magic("colors", "nocolor")
    except Exception:
        pass
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    # Matched by class name in __call__ rather than registered as a type printer: nothing is
    # imported before such an object is displayed, and matplotlib's inline backend removes
    # every formatter's Figure printer when it is set up.
    def register(mime, type_name, fn):
        # type_name: (top-level package, class name)
        class _Formatter(BaseFormatter):
            format_type = Unicode(mime)
            print_method = ObjectName("_repr_ember_none_")
            _return_type = (dict, list, str)

            def __call__(self, obj):
                if self.enabled and any(
                    c.__name__ == type_name[1] and c.__module__.split(".")[0] == type_name[0]
                    for c in type(obj).__mro__
                ):
                    try:
                        return fn(obj)
                    except Exception:
                        return None
                return super().__call__(obj)

        ip.display_formatter.formatters[mime] = _Formatter(parent=ip.display_formatter)
        active = list(ip.display_formatter.active_types)
        if mime not in active:
            ip.display_formatter.active_types = active + [mime]

    def dataframe(df):
        # Through pandas' JSON writer: numpy scalars, NaN (null) and timestamps (ISO) as JSON.
        import json

        return {str(c): json.loads(df[c].to_json(orient="values", date_format="iso")) for c in df.columns}

    def figure(fig):
        try:
            from e2b_charts import chart_figure_to_dict

            return chart_figure_to_dict(fig)
        except Exception:
            return None

    register("e2b/data", ("pandas", "DataFrame"), dataframe)
    register("e2b/chart", ("matplotlib", "Figure"), figure)

    # ipykernel sends what a cell printed every 0.2 s, however much it is: a cell printing fast
    # would make messages of tens of megabytes, which the server must hold whole. Flushing at
    # 1 MiB keeps them small (and makes such a cell wait for its output to be sent).
    # `_schedule_flush` is patched, not `write`: IPython swaps the instances' `write` around
    # every cell, and `write` calls `self._schedule_flush()` after buffering.
    try:
        from ipykernel.iostream import OutStream
    except Exception:
        return
    original_schedule = getattr(OutStream, "_schedule_flush", None)
    if original_schedule is None:
        return

    def _schedule_flush(self):
        try:
            pending = sum(b.tell() for b in self._buffers.values())
        except Exception:
            pending = 0
        if pending >= 1 << 20:
            self.flush()
        else:
            original_schedule(self)

    OutStream._schedule_flush = _schedule_flush


__ember_setup()
del __ember_setup
