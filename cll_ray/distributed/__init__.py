"""Everything that uses Ray, and nothing else: the cluster connection, the run's driver, the Ray Train worker loop,
the Ray Data pipelines (training rows, teacher features) and the Ray Tune adapter. The core beside it (model,
embedding, losses, methods, engine, metrics, config) never imports Ray; ``tests/test_layout.py`` keeps it so."""
