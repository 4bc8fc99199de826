"""Timetables: when scheduled release runs start."""
