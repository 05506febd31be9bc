"""Feature atlases: what each neuron or transcoder feature responds to, built offline from a corpus.

``core.atlas.build`` builds one (torch; a streaming pass over the corpus, resumable),
``core.atlas.corpus`` reads the corpus (files, or text sampled from the model itself),
``core.atlas.store`` reads a finished atlas (torch-free: the workbench, reports and
``circuitdesk atlas show`` use it without loading a model).
"""
