from cll_ray.report.builder import main

raise SystemExit(main())
