"""Built-in components. Every module below this package is imported once by the registry, so adding
a component is adding a file: nothing else needs editing."""
