"""Built-in components, one per file, in a folder per kind: ``token_mixers/``, ``channel_mixers/``, ``norms/``,
``acts/``, ``stems/``, ``downsamples/``, ``heads/``, ``shortcuts/``, and ``composites/`` (components made of
components: block, split, sum, seq, gate); ``common/`` holds helpers they share (conv arithmetic, TensorFlow same
padding, re-parameterization), no components. Every module below this package is imported once by the registry, so
adding a component is adding a file: nothing else needs editing."""
