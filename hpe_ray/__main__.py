from hpe_ray.cli import main

raise SystemExit(main())
