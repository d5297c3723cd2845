"""ravel: nested virtualization labs on public clouds and on your own machine."""

__version__ = "0.1.0"
