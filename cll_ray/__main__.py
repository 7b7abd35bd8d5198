from cll_ray.cli import main

raise SystemExit(main())
