"""What the tests share: the example stack's run and files, what a test needs (root, a real tool) and
the figures it measured, and the harnesses that start real processes (network namespaces, the live
Loki and VIP labs, Prometheus, booted Debian systems). Each harness cleans up what it started, by
pid, also when the test fails. Fixtures stay in ``tests/conftest.py``; nothing is imported from it.
"""
