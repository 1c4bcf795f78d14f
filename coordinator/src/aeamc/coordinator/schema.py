"""Versioned schema migrations (``PRAGMA user_version`` is the version).

Never edit a released migration: append a new one. Each runs in its own transaction.

Each migration also says how to undo it: ``down`` returns a database of that version to
the schema of the version before, exactly (``sqlite_master`` as the earlier version left
it), keeping every row of the tables and columns that exist in both. When a migration is
applied its ``down`` statements are stored in the database itself (``schema_downgrades``,
from v10 on), so an older release, which knows nothing of the newer migrations, can still
undo them: ``aeamc-coordinator db downgrade`` (``downgrade.py``). The statements run with
the lifecycle triggers dropped (``lifecycle_triggers``: installed again afterwards), and
must not depend on the schema of any later version.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema version: what makes it (``up``) and what takes it back (``down``), on
    SQLite; from v14 on also what makes it on PostgreSQL (``pg_up``, see ``pgschema``)."""

    up: list[str]
    down: list[str]
    pg_up: list[str] | None = None


# v1's tables that v7 rebuilt: v7's down statements make them again with the same text.
_V1_PROOFS = """CREATE TABLE proofs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            pot TEXT NOT NULL,
            signature BLOB NOT NULL,
            output BLOB NOT NULL,
            output_digest TEXT NOT NULL,
            accepted_at INTEGER NOT NULL,
            block_height INTEGER,
            credit TEXT NOT NULL DEFAULT 'unverified'
                CHECK (credit IN ('unverified','verified','void')),
            UNIQUE (task_id, device_id)
        )"""
_V1_SPOT_CHECKS = """CREATE TABLE spot_checks (
            task_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            block_height INTEGER NOT NULL,
            indices TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending','passed','failed','unanswered')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            detail TEXT,
            reexecuted_chunks INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            completed_at INTEGER,
            PRIMARY KEY (task_id, device_id)
        )"""
_V1_PROOFS_UNBLOCKED = """CREATE INDEX proofs_unblocked ON proofs(block_height, seq)"""

# v7 taken back: proofs and spot-checks are rebuilt with v1's text (a column added back by
# ALTER TABLE would come last, where v1 has it in the middle); a proof's block_height is
# the block whose seq range holds it; a random spot-check's indices, which v7 derives when
# the challenge is sent, become an empty list (v6 stored them at formation).
_V7_DOWN = [
    "DROP INDEX spot_checks_state",
    "ALTER TABLE spot_checks RENAME TO spot_checks_v7",
    _V1_SPOT_CHECKS,
    """INSERT INTO spot_checks SELECT task_id, device_id, block_height,
        coalesce(indices, '[]'), state, attempts, next_attempt_at, detail, reexecuted_chunks,
        created_at, completed_at FROM spot_checks_v7""",
    "DROP TABLE spot_checks_v7",
    "CREATE INDEX spot_checks_state ON spot_checks(state, next_attempt_at)",
    "DROP INDEX proofs_receipts",
    "ALTER TABLE proofs RENAME TO proofs_v7",
    _V1_PROOFS,
    """INSERT INTO proofs (seq, task_id, device_id, pot, signature, output, output_digest,
        accepted_at, block_height, credit)
        SELECT p.seq, p.task_id, p.device_id, p.pot, p.signature, p.output, p.output_digest,
            p.accepted_at,
            (SELECT b.height FROM blocks b WHERE p.seq BETWEEN b.first_seq AND b.last_seq),
            p.credit
        FROM proofs_v7 p""",
    # AUTOINCREMENT's high-water mark, not just the largest seq left: seqs are never reused.
    "DELETE FROM sqlite_sequence WHERE name = 'proofs'",
    "UPDATE sqlite_sequence SET name = 'proofs' WHERE name = 'proofs_v7'",
    "DROP TABLE proofs_v7",
    _V1_PROOFS_UNBLOCKED,
    "DROP TRIGGER blocks_seq_fixed",
    "DROP TRIGGER blocks_seq_range",
    "DROP INDEX blocks_last_seq",
    "ALTER TABLE blocks DROP COLUMN last_seq",
    "ALTER TABLE blocks DROP COLUMN first_seq",
]

#: The version whose migration creates ``schema_downgrades``: from it on, the database
#: holds the down statements of every version it is at or below.
DOWNGRADES_STORED_FROM = 10

MIGRATIONS: list[Migration] = [
    # v1
    Migration(
        up=[
            """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
            """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending','active','stale','quarantined')),
            capabilities TEXT NOT NULL,
            endpoint TEXT,
            address TEXT,
            enrolled_at INTEGER NOT NULL,
            approved_at INTEGER,
            last_seq INTEGER NOT NULL DEFAULT -1,
            last_seen INTEGER,
            telemetry TEXT,
            eps REAL,
            passes INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            unanswered INTEGER NOT NULL DEFAULT 0,
            timeouts INTEGER NOT NULL DEFAULT 0,
            refusals INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            state_reason TEXT
        )""",
            """CREATE TABLE heartbeats (
            device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            timestamp INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            telemetry TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        )""",
            """CREATE INDEX heartbeats_received ON heartbeats(received_at)""",
            """CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('operator','client','enroll')),
            label TEXT NOT NULL DEFAULT '',
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            uses_left INTEGER
        )""",
            """CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            params TEXT NOT NULL,
            chunks INTEGER NOT NULL,
            replicas INTEGER NOT NULL,
            deadline INTEGER,
            created_at INTEGER NOT NULL,
            client TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL
                CHECK (state IN ('queued','running','completed','disputed','failed')),
            output_digest TEXT,
            completed_at INTEGER,
            detail TEXT
        )""",
            """CREATE INDEX tasks_state ON tasks(state, created_at)""",
            """CREATE TABLE assignments (
            task_id TEXT NOT NULL REFERENCES tasks(task_id),
            device_id TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('offered','accepted','proved','refused','expired','lost')),
            issued_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            message TEXT NOT NULL,
            reason TEXT,
            PRIMARY KEY (task_id, device_id)
        )""",
            """CREATE INDEX assignments_state ON assignments(state, expires_at)""",
            _V1_PROOFS,
            _V1_PROOFS_UNBLOCKED,
            """CREATE TABLE blocks (
            height INTEGER PRIMARY KEY,
            hash BLOB NOT NULL UNIQUE,
            previous_hash BLOB NOT NULL,
            timestamp INTEGER NOT NULL,
            receipt_count INTEGER NOT NULL,
            header BLOB NOT NULL,
            payload BLOB NOT NULL
        )""",
            _V1_SPOT_CHECKS,
            """CREATE INDEX spot_checks_state ON spot_checks(state, next_attempt_at)""",
            """CREATE TABLE candidates (
            device_id TEXT PRIMARY KEY,
            address TEXT,
            port INTEGER,
            txt TEXT NOT NULL,
            last_seen INTEGER NOT NULL
        )""",
        ],
        down=[
            "DROP TABLE candidates",
            "DROP INDEX spot_checks_state",
            "DROP TABLE spot_checks",
            "DROP TABLE blocks",
            "DROP INDEX proofs_unblocked",
            "DROP TABLE proofs",
            "DROP INDEX assignments_state",
            "DROP TABLE assignments",
            "DROP INDEX tasks_state",
            "DROP TABLE tasks",
            "DROP TABLE tokens",
            "DROP INDEX heartbeats_received",
            "DROP TABLE heartbeats",
            "DROP TABLE devices",
            "DROP TABLE meta",
        ],
    ),
    # v2: anchoring (SPEC §7). An anchor is one anchor(root) transaction; its leaves are the
    # blocks whose hashes the root covers, by leaf index. A block's anchor_id names the one
    # anchor that currently owns it (live or final); NULL means it waits for the next root.
    Migration(
        up=[
            """CREATE TABLE anchors (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            root BLOB NOT NULL,
            tree_size INTEGER NOT NULL,
            chain_id INTEGER NOT NULL,
            contract TEXT NOT NULL,
            embedded INTEGER NOT NULL DEFAULT 0,
            sender TEXT NOT NULL,
            nonce INTEGER,
            state TEXT NOT NULL CHECK (state IN ('pending','sent','included','final',
                'reorged','dropped','failed','abandoned')),
            max_fee_per_gas INTEGER,
            max_priority_fee_per_gas INTEGER,
            tx_hash TEXT NOT NULL,
            first_broadcast_at INTEGER,
            last_broadcast_at INTEGER,
            block_number INTEGER,
            block_hash BLOB,
            gas_used INTEGER,
            effective_gas_price INTEGER,
            created_at INTEGER NOT NULL,
            included_at INTEGER,
            final_at INTEGER,
            detail TEXT
        )""",
            # A root is live or final at most once per contract: never sent twice.
            """CREATE UNIQUE INDEX anchors_live_root ON anchors(chain_id, contract, root)
            WHERE state IN ('pending','sent','included','final')""",
            """CREATE INDEX anchors_state ON anchors(state, id)""",
            """CREATE TABLE anchor_txs (
            tx_hash TEXT PRIMARY KEY,
            anchor_id INTEGER NOT NULL REFERENCES anchors(id),
            nonce INTEGER NOT NULL,
            max_fee_per_gas INTEGER NOT NULL,
            max_priority_fee_per_gas INTEGER NOT NULL,
            gas_limit INTEGER NOT NULL,
            raw BLOB NOT NULL,
            created_at INTEGER NOT NULL
        )""",
            """CREATE INDEX anchor_txs_anchor ON anchor_txs(anchor_id, created_at)""",
            """CREATE TABLE anchor_leaves (
            anchor_id INTEGER NOT NULL REFERENCES anchors(id),
            leaf_index INTEGER NOT NULL,
            height INTEGER NOT NULL REFERENCES blocks(height),
            PRIMARY KEY (anchor_id, leaf_index)
        )""",
            """CREATE INDEX anchor_leaves_height ON anchor_leaves(height)""",
            """ALTER TABLE blocks ADD COLUMN anchor_id INTEGER REFERENCES anchors(id)""",
            """ALTER TABLE blocks ADD COLUMN leaf_index INTEGER""",
            """CREATE INDEX blocks_anchor ON blocks(anchor_id, height)""",
            # Per block: everything a proof bundle's "anchor" member needs, in one place.
            """CREATE VIEW block_anchors AS
            SELECT b.height, b.hash, b.anchor_id, b.leaf_index, a.tree_size, a.root,
                   a.tx_hash, a.block_number, a.chain_id, a.contract, a.state
            FROM blocks b LEFT JOIN anchors a ON a.id = b.anchor_id""",
        ],
        down=[
            "DROP VIEW block_anchors",
            "DROP INDEX blocks_anchor",
            "ALTER TABLE blocks DROP COLUMN leaf_index",
            "ALTER TABLE blocks DROP COLUMN anchor_id",
            "DROP INDEX anchor_leaves_height",
            "DROP TABLE anchor_leaves",
            "DROP INDEX anchor_txs_anchor",
            "DROP TABLE anchor_txs",
            "DROP INDEX anchors_state",
            "DROP INDEX anchors_live_root",
            "DROP TABLE anchors",
        ],
    ),
    # v3: erasure (SPEC §11). What remains of an erased device is its pseudonymous id, as in
    # the receipts already in microblocks: enough to refuse the identity for good and to
    # say why its proof bundles can no longer be served.
    Migration(
        up=[
            """CREATE TABLE erased_devices (
            device_id TEXT PRIMARY KEY,
            erased_at INTEGER NOT NULL
        )""",
        ],
        down=["DROP TABLE erased_devices"],
    ),
    # v4: feature flags (SPEC §10). A flag is on for a device when its bucket is below the
    # flag's percent; every change of a percent is kept, with who made it and when.
    Migration(
        up=[
            """CREATE TABLE flags (
            name TEXT PRIMARY KEY,
            percent INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
            updated_at INTEGER NOT NULL,
            updated_by TEXT NOT NULL
        )""",
            """CREATE TABLE flag_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            from_percent INTEGER,
            to_percent INTEGER NOT NULL,
            at INTEGER NOT NULL,
            by TEXT NOT NULL
        )""",
            """CREATE INDEX flag_history_name ON flag_history(name, id)""",
        ],
        down=[
            "DROP INDEX flag_history_name",
            "DROP TABLE flag_history",
            "DROP TABLE flags",
        ],
    ),
    # v5: TLS client certificates (SPEC §12). Each certificate issued to a device, and the
    # serials revoked when a device is quarantined or erased. A revoked serial keeps no
    # device id: after an erasure it says nothing about whom it belonged to.
    Migration(
        up=[
            """CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            not_after INTEGER NOT NULL
        )""",
            """CREATE INDEX certificates_device ON certificates(device_id)""",
            """CREATE TABLE revoked_certificates (
            serial TEXT PRIMARY KEY,
            revoked_at INTEGER NOT NULL,
            reason TEXT NOT NULL
        )""",
        ],
        down=[
            "DROP TABLE revoked_certificates",
            "DROP INDEX certificates_device",
            "DROP TABLE certificates",
        ],
    ),
    # v6: fleet updates (docs/updates.md). A release is rolled out through the flag
    # ``release-<version>``; each device's latest word on each release is kept.
    Migration(
        up=[
            """CREATE TABLE releases (
            version TEXT PRIMARY KEY,
            percent INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
            state TEXT NOT NULL CHECK (state IN ('rolling','halted')),
            published_at INTEGER NOT NULL,
            published_by TEXT NOT NULL,
            halted_at INTEGER,
            halt_reason TEXT
        )""",
            """CREATE TABLE update_reports (
            device_id TEXT NOT NULL,
            release TEXT NOT NULL,
            version TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('updated','rolled_back','refused')),
            detail TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (device_id, release)
        )""",
        ],
        down=["DROP TABLE update_reports", "DROP TABLE releases"],
    ),
    # v7: block membership per block, not per proof. A block's receipts are the proofs whose
    # seq is in [first_seq, last_seq]: seqs grow with acceptance (AUTOINCREMENT, never
    # reused) and a block takes the oldest proofs not yet in one, so the ranges are disjoint
    # and ordered like the heights, and a proof past the last block's last_seq waits for the
    # next. Proofs in a block are never deleted (erasure keeps them as receipts), so a range
    # holds exactly its block's receipts; its gaps are proofs erased before any block took
    # them. Forming a block no longer rewrites every (wide) proof row it takes. The triggers
    # make the database itself refuse a block that overlaps an earlier one or a moved range.
    # Spot-checks are rebuilt so that ``indices`` may be NULL: a random check's indices are
    # derived from the block hash when the challenge is sent (SPEC §2), not stored at
    # formation; a dispute stores the chunks that differ.
    Migration(
        up=[
            """ALTER TABLE blocks ADD COLUMN first_seq INTEGER""",
            """ALTER TABLE blocks ADD COLUMN last_seq INTEGER""",
            """UPDATE blocks SET
            first_seq = (SELECT min(p.seq) FROM proofs p WHERE p.block_height = blocks.height),
            last_seq = (SELECT max(p.seq) FROM proofs p WHERE p.block_height = blocks.height)""",
            """CREATE UNIQUE INDEX blocks_last_seq ON blocks(last_seq)""",
            """CREATE TRIGGER blocks_seq_range BEFORE INSERT ON blocks
            WHEN NEW.first_seq IS NULL OR NEW.last_seq IS NULL OR NEW.first_seq > NEW.last_seq
                OR NEW.first_seq <= (SELECT coalesce(max(last_seq), 0) FROM blocks)
            BEGIN SELECT raise(ABORT, 'a block takes a seq range past the last block''s'); END""",
            """CREATE TRIGGER blocks_seq_fixed BEFORE UPDATE OF first_seq, last_seq ON blocks
            BEGIN SELECT raise(ABORT, 'a block''s seq range never changes'); END""",
            """DROP INDEX proofs_unblocked""",
            """ALTER TABLE proofs DROP COLUMN block_height""",
            # The task's chunk count, copied from the assignment when the proof is stored: a
            # receipt's check probability depends on it (reputation.assurance_rate), and
            # formation must not look up 10,000 tasks to learn it. 0 (unknown) checks always.
            """ALTER TABLE proofs ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0""",
            """UPDATE proofs SET chunks = coalesce(
            (SELECT t.chunks FROM tasks t WHERE t.task_id = proofs.task_id), 0)""",
            # What forming a block reads of a proof, apart from its wide PoT and output.
            """CREATE INDEX proofs_receipts ON proofs(seq, task_id, device_id, signature, chunks)""",  # noqa: E501
            """CREATE TABLE spot_checks_v7 (
            task_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            block_height INTEGER NOT NULL,
            indices TEXT,
            -- the same rule as v1's IN list, which SQLite evaluates through a temporary
            -- table built per inserted row: a block's 10,000 checks paid 20 ms for it
            state TEXT NOT NULL CHECK (state = 'pending' OR state = 'passed'
                OR state = 'failed' OR state = 'unanswered'),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            detail TEXT,
            reexecuted_chunks INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            completed_at INTEGER,
            PRIMARY KEY (task_id, device_id)
        ) WITHOUT ROWID""",
            """INSERT INTO spot_checks_v7 SELECT task_id, device_id, block_height, indices, state,
            attempts, next_attempt_at, detail, reexecuted_chunks, created_at, completed_at
            FROM spot_checks""",
            """DROP TABLE spot_checks""",
            """ALTER TABLE spot_checks_v7 RENAME TO spot_checks""",
            """CREATE INDEX spot_checks_state ON spot_checks(state, next_attempt_at)""",
        ],
        down=_V7_DOWN,
    ),
    # v8: failures that may halt a rollout again. A resumed rollout counts the failures
    # reported from the resume on (``counted_from``, ms); 0 counts every report.
    Migration(
        up=[
            """ALTER TABLE releases ADD COLUMN counted_from INTEGER NOT NULL DEFAULT 0""",
        ],
        down=["ALTER TABLE releases DROP COLUMN counted_from"],
    ),
    # v9: who owns a task. Every token gets an owner id (8 hex digits, unique, never reused:
    # tokens are never deleted), and a task belongs to the owner of the token that
    # submitted it; a client sees only its own. Tasks from before have no owner (NULL):
    # only the operator sees them.
    Migration(
        up=[
            """ALTER TABLE tokens ADD COLUMN owner TEXT NOT NULL DEFAULT ''""",
            """UPDATE tokens SET owner = printf('%08x', rowid)""",
            """CREATE UNIQUE INDEX tokens_owner ON tokens(owner)""",
            """ALTER TABLE tasks ADD COLUMN owner TEXT""",
            """CREATE INDEX tasks_owner ON tasks(owner, created_at)""",
        ],
        down=[
            "DROP INDEX tasks_owner",
            "ALTER TABLE tasks DROP COLUMN owner",
            "DROP INDEX tokens_owner",
            "ALTER TABLE tokens DROP COLUMN owner",
        ],
    ),
    # v10: the way back. Each migration's down statements (a JSON list), stored when it is
    # applied, so that an older release can undo migrations it does not know (downgrade.py).
    Migration(
        up=[
            """CREATE TABLE schema_downgrades (
            version INTEGER PRIMARY KEY,
            statements TEXT NOT NULL
        )""",
        ],
        down=["DROP TABLE schema_downgrades"],
    ),
    # v11: clients' content (docs/workloads.md). WebAssembly modules and task inputs, named
    # by the SHA-256 of their bytes, which live in files of the state directory; a row is
    # only written once its file is on disk. ``blob_owners``: who uploaded it, so a task
    # can only name content its owner uploaded (however public the digest).
    Migration(
        up=[
            """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('module','input')),
            size INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )""",
            """CREATE TABLE blob_owners (
            digest TEXT NOT NULL REFERENCES blobs(digest),
            owner TEXT NOT NULL,
            added_at INTEGER NOT NULL,
            PRIMARY KEY (digest, owner)
        )""",
        ],
        down=["DROP TABLE blob_owners", "DROP TABLE blobs"],
    ),
    # v12: placement (SPEC §4.1). ``devices.tags``: the tags the operator gave a device (a
    # JSON array; its own come with its capabilities). ``tasks.placement``: what a task
    # needs beyond its kind and parameters (its client's ``requires`` and, for a WASM
    # task, its module's size), JSON; NULL for tasks from before, which need nothing more.
    Migration(
        up=[
            """ALTER TABLE devices ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'""",
            """ALTER TABLE tasks ADD COLUMN placement TEXT""",
        ],
        down=[
            "ALTER TABLE tasks DROP COLUMN placement",
            "ALTER TABLE devices DROP COLUMN tags",
        ],
    ),
    # v13: several processes on one database (SPEC §16). ``progress``: the chunks done
    # each device last reported of the tasks it holds (progress.py), written with the
    # heartbeat that reports them, so whichever process shows a task sees them; display
    # data only, gone with the device. ``device_changes``: the id of
    # every device row written, in commit order (writes are serialised and ids never reused, so they
    # grow with commits), filled by triggers so that no write anywhere can skip it. Each process
    # follows it to keep its in-memory view of the fleet in step with the others' writes;
    # the leader prunes what every process has had time to read.
    Migration(
        up=[
            """CREATE TABLE progress (
            device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
            task_id TEXT NOT NULL,
            chunks_done INTEGER NOT NULL,
            PRIMARY KEY (device_id, task_id)
        ) WITHOUT ROWID""",
            """CREATE TABLE device_changes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL
        )""",
            """CREATE TRIGGER device_changes_insert AFTER INSERT ON devices
            BEGIN INSERT INTO device_changes (device_id) VALUES (NEW.device_id); END""",
            """CREATE TRIGGER device_changes_update AFTER UPDATE ON devices
            BEGIN INSERT INTO device_changes (device_id) VALUES (NEW.device_id); END""",
            """CREATE TRIGGER device_changes_delete AFTER DELETE ON devices
            BEGIN INSERT INTO device_changes (device_id) VALUES (OLD.device_id); END""",
        ],
        down=[
            "DROP TRIGGER device_changes_delete",
            "DROP TRIGGER device_changes_update",
            "DROP TRIGGER device_changes_insert",
            "DROP TABLE device_changes",
            "DROP TABLE progress",
        ],
    ),
    # v14: several coordinator nodes on one PostgreSQL database (docs/high-availability.md).
    # Each term of leadership, in order: the node that took the lead and the address where
    # it takes the requests other nodes relay to it (``cluster.py``). The last row names
    # the leader; the rows before are the history an operator reads after a fail-over.
    Migration(
        up=[
            """CREATE TABLE leaders (
            term INTEGER PRIMARY KEY,
            node TEXT NOT NULL,
            relay_url TEXT NOT NULL,
            started_at INTEGER NOT NULL
        )""",
        ],
        down=["DROP TABLE leaders"],
        pg_up=[
            """CREATE TABLE leaders (
            term BIGINT PRIMARY KEY,
            node TEXT NOT NULL,
            relay_url TEXT NOT NULL,
            started_at BIGINT NOT NULL
        )""",
        ],
    ),
]
