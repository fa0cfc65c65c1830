"""Webhooks (docs/webhooks.md): signed notices about keys, from an outbox.

``events.py`` names the events and builds their bodies, ``signing.py`` signs
them (Standard Webhooks), ``ssrf.py`` and ``resolver.py`` keep deliveries to
global addresses, ``schedule.py`` says when to try again, ``deliverer.py`` is
the background task that sends them, ``traffic.py`` turns refusals on the
proxy path into notices.
"""
