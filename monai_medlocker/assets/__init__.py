"""Data files shipped with the package (default owner logo, sample images)."""
