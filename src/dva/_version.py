"""The package version, in a module of its own so that any module can read it without importing the
package (``dva/__init__`` imports most of dva; importing it from inside dva risks an import cycle)."""

__version__ = "0.1.0"
