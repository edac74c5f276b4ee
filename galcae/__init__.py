"""galcae: conditional autoencoders that measure galaxy photometric parameters.

Implements Leung, Yan & Yin, "A Generative Model for Disentangling Galaxy Photometric
Parameters" (arXiv:2507.15898). Importing galcae does no work and writes no files.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
