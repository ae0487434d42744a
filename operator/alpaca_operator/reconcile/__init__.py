"""Reconcilers: render the desired children, apply what differs, observe, compute the status."""
