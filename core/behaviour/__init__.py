"""Behaviour audits: a suite's per-case graphs and circuits aggregated into a behaviour graph, two
groups of cases or two model versions contrasted with corrected permutation tests, and the top
differences checked by intervention (``core.behaviour.study``)."""
