"""Trained classifier heads of the learned router (package data; `make train-router` writes them)."""
