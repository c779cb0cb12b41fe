"""Shortcuts (kind ``shortcut``): what a residual branch adds when it changes the width or the map size."""
