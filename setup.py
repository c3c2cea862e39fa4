"""Packaging: the ``imageserver`` package, its twistd plugin and the ``image-server`` command."""

from setuptools import setup

setup(
    packages=[
        "imageserver",
        "imageserver.console",
        # Directories of files, not code; named as packages so that setuptools ships them without
        # warning about packages it would leave out.
        "imageserver.console.static",
        "imageserver.console.static.pages",
        "imageserver.console.static.vendor",
        "imageserver.processing",
        "twisted.plugins",
    ],
    # Every package under one root, named as such: an editable install then puts the checkout
    # itself on sys.path (a plain .pth line), where twistd looks for twisted/plugins.  Without it
    # setuptools installs an import hook that finds the packages but hides the plugin.
    package_dir={"": "."},
    package_data={
        "twisted": ["plugins/imageserver_plugin.py"],
        # The admin console's files, served as they are (no build step).
        "imageserver.console.static": ["*.*"],
        "imageserver.console.static.pages": ["*.js"],
        "imageserver.console.static.vendor": ["*.*"],
    },
    scripts=["bin/image-server"],
)
