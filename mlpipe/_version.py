"""The version of mlpipe (read by the build backend and by the compiler, which records it in the IR)."""

__version__ = "0.1.0"
