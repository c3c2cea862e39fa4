"""The admin site's web console: its static files (``static/``, served as they are: no build step)
and the listings of the local store it shows (`listing`)."""

import os

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
