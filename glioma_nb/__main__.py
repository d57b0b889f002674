import sys

from glioma_nb.cli import main

sys.exit(main())
