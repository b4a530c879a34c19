"""Healing: scanner, healer, MRF queue and load generators (filled by a later issue)."""
