"""The coordinator's store layer: the only code that writes its tables.

One module per group of tables written together, each the only writer of its tables:

- ``devices``: devices, heartbeats, erased_devices and candidates (mDNS adverts);
- ``tasks``: tasks and assignments;
- ``proofs``: proofs and spot_checks;
- ``blocks``: blocks (the anchoring columns excepted, see below);
- ``tokens``: tokens;
- ``flags``: flags and flag_history;
- ``certificates``: certificates and revoked_certificates;
- ``leaders``: leaders (the terms of leadership of a cluster);
- ``registry``: not a table but the live device view (``DeviceRegistry``), the only thing
  that changes the in-memory ``Device`` entries.

Two table groups have their owners elsewhere, next to the code that gives them meaning:
``anchoring/store.py`` (anchors, anchor_txs, anchor_leaves, the anchoring columns of
blocks, and its nonce in meta) and ``updates/`` (``rollouts.py``: releases;
``reports.py``: update_reports).

Every write function takes the writer's transaction handle (the ``Tx``
that ``Database.write`` passes), so a service that calls several of them still commits
once: the service decides what happens, the store says how it is written. State changes
are checked against ``aeamc.shared.lifecycle`` in Python where the old state is known; the
lifecycle triggers (``lifecycle_triggers.py``) stay the backstop. ``tests/unit/
test_store_ownership.py`` fails when a module outside its table's owner writes it.
"""
