from __future__ import annotations

import sys

from releasetrain.cli import main

sys.exit(main())
