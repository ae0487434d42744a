"""Observers: pure functions from child objects' status to the parent's conditions."""
