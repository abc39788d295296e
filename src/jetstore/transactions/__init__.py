"""Transactions: snapshots, private write sets, and what a commit hands to the log."""
