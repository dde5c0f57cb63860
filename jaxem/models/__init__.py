"""Component families, one file each."""

from jaxem.models.gaussian import Gaussian, GaussianParams, GaussianStats

__all__ = ["Gaussian", "GaussianParams", "GaussianStats"]
