"""`python -m mcp_server` is `arc`: the daemon, the bridge and the demo start arc this way, wherever it is installed."""
import sys

from .surfaces.cli import main

sys.exit(main())
