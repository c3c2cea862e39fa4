"""Packaging: the ``imageserver`` package, its twistd plugin and the ``image-server`` command."""

from setuptools import setup

setup(
    packages=["imageserver", "imageserver.processing", "twisted.plugins"],
    package_data={"twisted": ["plugins/imageserver_plugin.py"]},
    scripts=["bin/image-server"],
)
