# Ember's code-interpreter template: IPython kernel settings (no colours in tracebacks, as E2B).
c.InteractiveShell.colors = "NoColor"  # noqa: F821
