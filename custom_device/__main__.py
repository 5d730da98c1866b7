"""``python -m paddle_medvl.custom_device``: print the environment that loads the test plugin."""
import sys

from . import main

sys.exit(main())
