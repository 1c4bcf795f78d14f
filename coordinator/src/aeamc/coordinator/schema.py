"""Versioned schema migrations (``PRAGMA user_version`` is the version).

Never edit a released migration: append a new one. Each runs in its own transaction.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # v1
    [
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
        """CREATE TABLE proofs (
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
        )""",
        """CREATE INDEX proofs_unblocked ON proofs(block_height, seq)""",
        """CREATE TABLE blocks (
            height INTEGER PRIMARY KEY,
            hash BLOB NOT NULL UNIQUE,
            previous_hash BLOB NOT NULL,
            timestamp INTEGER NOT NULL,
            receipt_count INTEGER NOT NULL,
            header BLOB NOT NULL,
            payload BLOB NOT NULL
        )""",
        """CREATE TABLE spot_checks (
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
        )""",
        """CREATE INDEX spot_checks_state ON spot_checks(state, next_attempt_at)""",
        """CREATE TABLE candidates (
            device_id TEXT PRIMARY KEY,
            address TEXT,
            port INTEGER,
            txt TEXT NOT NULL,
            last_seen INTEGER NOT NULL
        )""",
    ],
]
