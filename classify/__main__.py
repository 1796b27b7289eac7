from featcache.classify.cli import main

raise SystemExit(main())
