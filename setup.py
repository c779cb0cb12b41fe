"""Packaging detail pyproject.toml cannot say: the top-level recipes/ folder ships inside the package as
metablocks._recipes, so shipped recipes are found from a normal (non-editable) install too."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["metablocks", "metablocks.*"]) + ["metablocks._recipes"],
    package_dir={"metablocks._recipes": "recipes"},
    package_data={"metablocks._recipes": ["*.yaml", "**/*.yaml"]},
)
