# Ember's code-interpreter template: runs in every Python kernel at start (IPython start-up
# file). It imports the data libraries once, so that a sandbox restored from the template's
# snapshot has them loaded and a first `import pandas` costs nothing. E2B's result formats
# (`e2b/data`, `e2b/chart`) are registered by ember-interpreter's own set-up, run in every Python
# kernel it starts (crates/interpreter/src/prelude.py).
import matplotlib.pyplot  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
