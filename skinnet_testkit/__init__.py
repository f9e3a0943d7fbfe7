"""Helpers shared by the tests (``tests/``) and the benchmarks (``benchmarks/``), so that neither
imports the other: synthetic lesion pictures and Derm7pt-like releases (:mod:`.synthetic`),
pictures that are not lesions (:mod:`.non_lesion`), a raw HTTP client of the Gradio API
(:mod:`.raw_http`), ``python app.py`` in its own process (:mod:`.app_process`), review queues
(:mod:`.queues`), the edits a near-duplicate must survive (:mod:`.edits`) and the browser the
Playwright tests and benchmarks drive (:mod:`.browser`).

Installed with the project (``pip install -e .``) but meant for a checkout: :mod:`.app_process`
runs the repository's ``app.py``. The library (``skinnet``) never imports this package.
"""
