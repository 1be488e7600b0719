"""pytest plugin: records a test run as exactly one DataCat session (entry point ``datacat``).

``plugin`` is what pytest loads (options, fixtures, marker); ``recorder`` records the run where it
is owned, ``relay`` runs where the tests run, ``reports`` turns reports into events and
``metadata`` describes the run. Nothing here is imported by ``datacat``.

PYTEST_DONT_REWRITE: no module here holds an assertion for pytest to rewrite, and ``plugin`` loads
the others with Python's own loader (see ``datacat``'s docstring).
"""
