"""outagemon: outage detection and caller answers for an internet provider's NOC."""

__version__ = "0.1.0"
