"""Portcullis: a zero-trust security and compliance gateway for securities brokers.

Importing this package stays light: nothing here starts aiohttp or loads keys.
"""

__version__ = "0.1.0"
