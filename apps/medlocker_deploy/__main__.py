"""Entry point of the MedLocker Deploy app (``python apps/medlocker_deploy ...``, and of the packaged MAP)."""

import sys

from app import main

if __name__ == "__main__":
    sys.exit(main())
