"""Small I/O helpers the agent, the coordinator and the tools share (asyncio, files, builds).

This subpackage is the one place in ``aeamc.shared`` that does I/O. The
protocol core never imports it, so importing ``aeamc.shared`` itself stays pure; a daemon
imports ``aeamc.shared.runtime.<module>`` explicitly.
"""
