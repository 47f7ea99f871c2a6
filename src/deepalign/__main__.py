from deepalign.cli import main

raise SystemExit(main())
