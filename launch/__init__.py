"""Command-line entry points (``python -m launch.train``, ``launch.experiments``,
``launch.prepare_data``, ``launch.evaluate``, ``launch.predict``, ``launch.export``,
``launch.aot``), what they share (``launch.cli``: flags, signals, errors and exit codes) and the
ml_collections configs under ``launch.configs``."""
