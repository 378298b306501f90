"""Shim for editable installs with setuptools < 70; all metadata is declarative in setup.cfg."""
from setuptools import setup

setup()
