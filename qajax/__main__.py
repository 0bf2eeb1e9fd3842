from qajax.cli import main

raise SystemExit(main())
