"""Anchoring microblock hashes to the MicroblockAnchor contract (SPEC §7).

``service`` runs the lifecycle of ``aeamc.shared.anchoring`` against a chain (``chain``)
with one wallet (``wallet``), storing every intent before acting (``store``); ``bundles``
builds the SPEC §8 proof bundles from what is stored. Nothing here imports web3 until a
chain is actually used, so the API and the command line start fast.
"""
