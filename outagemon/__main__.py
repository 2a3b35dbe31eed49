from outagemon.cli import main

raise SystemExit(main())
