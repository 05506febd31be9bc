"""Behaviour audits: findings about a behaviour over a suite of prompts."""
