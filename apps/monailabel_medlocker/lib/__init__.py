# The MedLocker MONAI Label app's own code (monailabel loads it from the app folder as ``lib``).
