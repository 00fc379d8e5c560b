"""Studies apart from the library: phantom data, phantom studies, quickstart sections, benchmarks.

Everything here *uses* the library (``domainfm.domains``, ``domainfm.shared``) to make sample data, run
experiments and measure; no library module imports it (``tests/test_layering.py`` checks). The layout
mirrors the library's: ``domainfm/domains/<domain>/X.py`` -> ``domainfm/studies/<domain>/X.py`` and
``domainfm/shared/<part>/X.py`` -> ``domainfm/studies/shared/<part>/X.py``; cross-cutting modules
(``device_check``, ``deploy_quickstart``) sit at the top. The CLI tables (``domainfm/cli.py``,
``domainfm/domains/*/cli.py``) and ``domainfm/quickstart.py`` name these modules by string: they are
where the two meet.
"""
