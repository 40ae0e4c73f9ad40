"""Serving an exported cascade: ``reswise serve EXPORT_DIR``. Three parts kept apart, so each is
tested alone and another engine can reuse one without the others:

* ``batcher``: per-stage queues, batches by size or wait, pooled escalation (asyncio + numpy);
* ``protocol``: Open Inference Protocol v2 bodies, JSON and binary, to tensors and back;
* ``app``: the Starlette routes, health, metrics, limits and draining (``server`` runs it).

Like :mod:`reswise.ship.runtime`, nothing here imports torch (a test checks).
"""
