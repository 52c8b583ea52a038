import sys

try:  # Ctrl-C while the modules load (the first ~0.1 s) is a quiet stop, as it is later
    from device.cli import main
except KeyboardInterrupt:
    sys.exit(130)

sys.exit(main())
