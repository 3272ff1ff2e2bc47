"""Relays compared by ``bench/test_bench_relay.py``, each run as its own process.

``python -m bench.relays.<name> [--port N]`` binds 127.0.0.1 (port 0: any free port), prints
``PORT <n>`` on stdout and serves until killed or until its stdin closes (the parent went away).
All three speak the same subset of the Hybrid Connections wire protocol (hybrid-connections-wire
§1.2, §3.1): a listener control channel ``GET /$hc/{hc}?sb-hc-action=listen``, a sender
``GET /$hc/{hc}?sb-hc-action=connect`` held until the listener opens the rendezvous named in the
``accept`` message, then frames relayed both ways. Only ``hyco_relay`` checks SAS tokens.
"""
