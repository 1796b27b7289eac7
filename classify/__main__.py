import os
import sys

from featcache.classify.cli import main

code = main()
if code in (130, 143):
    # a fit's worker threads may still be inside torch; finalising the interpreter under
    # them aborted ("terminate called without an active exception", exit 134)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
