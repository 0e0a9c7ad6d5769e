"""Shared pytest configuration for taskscheduler's tests."""
