"""pysendmail: a sendmail drop-in that relays mail through a smarthost.

This file must stay tiny: the `sendmail` hot path imports it on every
invocation, so nothing here may import more than the standard minimum.
"""

__version__ = "0.1.0"
