import os
import sys

from glioma_nb.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
    # A torchrun worker (segment-train --nproc N) that finished: its files are written and every process passed
    # the closing barrier, and its process group is destroyed. It leaves without the interpreter's and the C++
    # libraries' teardown, where gloo / c10d threads have been seen to abort a finished worker ("terminate called
    # without an active exception", SIGABRT; CI, torch 2.13 on CPU), which torchrun reports as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)
sys.exit(code)
