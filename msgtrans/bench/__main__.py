"""``python -m msgtrans.bench``: the same as ``python -m msgtrans bench``."""

import sys

from . import main

sys.exit(main())
