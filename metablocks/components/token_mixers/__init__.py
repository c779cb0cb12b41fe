"""Token mixers: one file each, config beside module."""
