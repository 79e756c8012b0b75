"""Wiring: settings, providers, the order in which components are built, outputs, the offline plan."""
