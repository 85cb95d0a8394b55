"""Command-line entry points (``python -m launch.train``, ``launch.experiments``,
``launch.prepare_data``) and the ml_collections configs under ``launch.configs``."""
