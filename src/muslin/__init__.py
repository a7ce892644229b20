"""Muslin: container networking for Linux."""
