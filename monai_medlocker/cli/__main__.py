import sys

from monai_medlocker.cli import main

sys.exit(main())
