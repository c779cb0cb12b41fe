"""Channel mixers: one file each, config beside module."""
