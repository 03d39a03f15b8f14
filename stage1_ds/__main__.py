"""`python -m stage1_ds` is the same as the `stage1` command."""

from stage1_ds.entry import main

raise SystemExit(main())
