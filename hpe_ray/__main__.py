from hpe_ray.cli import main

# Guarded: data generation spawns worker processes, which re-import the main module.
if __name__ == "__main__":
    raise SystemExit(main())
