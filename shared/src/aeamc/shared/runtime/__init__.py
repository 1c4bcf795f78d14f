"""Small asyncio I/O helpers the agent and the coordinator share.

This subpackage is the one place in ``aeamc.shared`` that touches the network. The
protocol core never imports it, so importing ``aeamc.shared`` itself stays pure; a daemon
imports ``aeamc.shared.runtime.<module>`` explicitly.
"""
