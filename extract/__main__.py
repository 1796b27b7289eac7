import sys

from featcache.extract.cli import main

if __name__ == "__main__":
    sys.exit(main())
