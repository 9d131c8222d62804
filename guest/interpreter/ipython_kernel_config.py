# Ember's code-interpreter template: IPython kernel settings. No colours in tracebacks (as E2B);
# no input history database (a write to SQLite for every cell, which nothing reads).
c.InteractiveShell.colors = "NoColor"  # noqa: F821
c.HistoryManager.enabled = False  # noqa: F821
