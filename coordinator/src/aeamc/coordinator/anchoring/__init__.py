"""Anchoring microblock hashes to the MicroblockAnchor contract (SPEC §7).

``service`` runs the lifecycle of ``aeamc.shared.anchoring`` against a chain (``chain``)
with one wallet (``wallet``), storing every intent before acting (``store``). It is a thin
loop over small parts: ``connection`` reaches the chain and reconciles what is stored with
it, ``sender`` starts anchors at a nonce planned from the chain, ``confirmer`` re-fetches
receipts (``observe``) until final and acts on reorgs, ``replacement`` re-signs stuck
transactions with higher fees, ``status`` is the view ``/v1/status`` serves; ``session``
holds what they share and ``calls`` the one chain thread. ``bundles`` builds the SPEC §8
proof bundles from what is stored. Nothing here imports web3 until a chain is actually
used, so the API and the command line start fast.
"""
